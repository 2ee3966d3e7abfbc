"""A bring-up that fails says why, with the failing component's last log lines, and leaves
nothing behind; the cleanup also removes what a killed run left.

The file name sorts first in this directory so that its bring-up runs before the shared
cluster takes the host lock (the test skips, saying so, when the cluster is already up).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import conftest, daemons, harness, images, settings, teardown
from tests.cluster.steps import BringUpError


@pytest.fixture
def root_only() -> None:
    reason = conftest.cluster_unavailable()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port someone else listens on."""
    with socket.create_server(("127.0.0.1", 0)) as s:
        yield s.getsockname()[1]


def test_a_component_that_cannot_start_fails_with_its_log_and_leaves_nothing(
    root_only: None, tmp_path: Path, taken_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    if conftest._started:
        pytest.skip("the shared cluster is up and holds the host lock")
    # etcd cannot bind its client port: the bring-up must stop at etcd, with etcd's words.
    monkeypatch.setattr(settings, "ETCD_CLIENT_PORT", taken_port)
    monkeypatch.setattr(images, "project_tarballs", lambda log: [])
    root = tmp_path / "run"
    with pytest.raises(BringUpError) as failed, harness.running_cluster(root):
        pytest.fail("the bring-up succeeded with etcd's port taken")
    message = str(failed.value)
    assert "etcd" in message
    assert "address already in use" in message, message
    assert teardown.leftovers(root) == []
    assert not root.exists()


def test_the_cleanup_stops_a_killed_runs_processes_and_mounts(
    root_only: None, tmp_path: Path
) -> None:
    root = tmp_path / "run"
    layout = settings.Layout(root)
    sleeper = daemons.start("kubelet", ["/bin/sleep", "300"], layout.pids, layout.logs)
    mount_point = root / "kubelet" / "pods" / "volume"
    mount_point.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mount_point)], check=True, timeout=10)
    try:
        assert teardown.leftovers(root, host_wide=False)  # the run "was killed" here
        assert teardown.clean(root, host_wide=False) == []
        assert sleeper.proc.wait(timeout=5) is not None
        assert not root.exists()
    finally:
        if sleeper.proc.poll() is None:
            sleeper.proc.kill()
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=10)


def test_a_component_that_exits_is_reported_with_its_last_lines(
    root_only: None, tmp_path: Path
) -> None:
    script = "import sys; print('listen tcp 127.0.0.1:1: bind: permission denied'); sys.exit(3)"
    daemon = daemons.start("kube-apiserver", [sys.executable, "-c", script], tmp_path, tmp_path)
    with pytest.raises(BringUpError) as failed:
        daemon.wait_until(lambda: False, 10, "/readyz")
    assert "kube-apiserver exited with 3" in str(failed.value)
    assert "bind: permission denied" in str(failed.value)


UPSTREAM_GO_MOD = """module k8s.io/kubernetes

go 1.24.0

godebug default=go1.24

require (
\tgithub.com/google/uuid v1.6.0
\tk8s.io/api v0.0.0
\tk8s.io/client-go v0.0.0 // indirect
)

require (
\tgithub.com/davecgh/go-spew v1.1.2-0.20180830191138-d8f796af33cc // indirect
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
)
"""


def test_the_throwaway_module_pins_what_kubernetes_pins() -> None:
    from tests.cluster.k8sbuild import staging_version, throwaway_go_mod

    assert staging_version("v1.34.4") == "v0.34.4"
    go_mod = throwaway_go_mod(UPSTREAM_GO_MOD, "v1.34.4")
    assert "\tk8s.io/kubernetes v1.34.4\n" in go_mod
    assert "\tgithub.com/google/uuid v1.6.0\n" in go_mod
    assert "\tgithub.com/davecgh/go-spew v1.1.2-0.20180830191138-d8f796af33cc\n" in go_mod
    assert "\tk8s.io/api v0.34.4\n" in go_mod and "\tk8s.io/client-go v0.34.4\n" in go_mod
    assert "\tk8s.io/api => k8s.io/api v0.34.4\n" in go_mod
    assert "./staging" not in go_mod
    assert "go 1.24.0" in go_mod and "godebug default=go1.24" in go_mod
