"""The cluster tier's fixtures: one cluster per test run, one namespace per test.

`cluster` (session scope) brings the cluster up the first time a test asks for it and takes
it down at the end of the run; `namespace` gives each test a fresh namespace in it. Both skip,
saying why, where the cluster cannot run (not root, not Linux). Every test in this directory
carries the `cluster` marker: `pytest -m cluster` runs this tier alone, `-m "not cluster"`
everything else.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import sys
from collections.abc import Iterator
from types import FrameType

import pytest

from tests.cluster import teardown
from tests.cluster.harness import Cluster, running_cluster
from tests.cluster.kube import Kube
from tests.cluster.measure import record

_started: list[Cluster] = []


def cluster_unavailable() -> str | None:
    """Why the cluster cannot run here, or None."""
    if not sys.platform.startswith("linux"):
        return "the cluster tier runs on Linux only"
    if os.geteuid() != 0:
        return "the cluster tier needs root (containerd, kubelet, mounts, cgroups, iptables)"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here + os.sep):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The single-node cluster, shared by every test of the run."""
    reason = cluster_unavailable()
    if reason:
        pytest.skip(reason)
    # A run stopped with SIGTERM (a CI timeout, `timeout make test`) tears the cluster down as
    # Ctrl-C does, instead of leaving it for the next run to clean up.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with running_cluster() as up:
            _started.append(up)
            record(f"cluster bring-up {up.timings}", sum(up.timings.phases.values()))
            yield up
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture
def kube(cluster: Cluster) -> Kube:
    """kubectl with the cluster's admin credentials."""
    return cluster.kube


@pytest.fixture
def namespace(kube: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of its own for the test (deleted without waiting afterwards)."""
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = kube.create_namespace(f"{stem}-{secrets.token_hex(3)}")
    yield name
    kube.delete_namespace(name)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """After a run that started the cluster, nothing of it may remain on the host (last:
    after an interrupted run, pytest tears the session's fixtures down in this hook)."""
    if not _started:
        return
    left = teardown.leftovers()
    if left:
        print(f"\nthe cluster left behind: {left}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
