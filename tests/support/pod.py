"""A pod in network namespaces the test creates (root only), as a mutated pod has it: the
init program's redirect, the real proxy as uid 1501 (readiness checked with `--probe`, as the
webhook's postStart hook does), a fake Entra ID on the pod's loopback, and next door the
metadata address with a fake IMDS. Apps run in it as uid 1000 with nothing but the
metadata address to go to."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.fake_entra import FakeEntra
from init import cli
from tests.support.jwt_claims import assert_client_result
from tests.support.netns import (
    PROXY_PORT,
    PROXY_UID,
    PodNetwork,
    init_env,
    pod_network,
    run_init,
    start_fake_imds,
)
from tests.support.sdk_clients import TESTS, clean_env, run_client

APP_UID = 1000


@dataclass
class Pod:
    net: PodNetwork
    entra: FakeEntra
    backend: str
    proxy_log: Path


@contextlib.contextmanager
def running_pod(backend: str) -> Iterator[Pod]:
    """The pod with `backend`'s iptables: redirect installed, proxy ready, as a mutated pod
    has it when its app container starts."""
    # Readable by uid 1501: the proxy reads the CA bundle and the projected token from here.
    workdir = Path(tempfile.mkdtemp(prefix="azwi-e2e-"))
    workdir.chmod(0o755)
    try:
        with pod_network() as net:
            start_fake_imds(net)
            init = run_init(net.pod, env=init_env(backend))
            assert init.returncode == cli.EXIT_OK, init.stdout + init.stderr
            with FakeEntra(workdir / "entra", prefix=net.pod.argv([])) as entra:
                env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **entra.env()}
                env["PYTHONUNBUFFERED"] = "1"
                log = workdir / "proxy.log"
                proxy = [sys.executable, "-m", "proxy", f"--proxy-port={PROXY_PORT}"]
                net.pod.popen(proxy, user=PROXY_UID, env=env, log=log)
                # What the webhook's postStart hook runs before the app container starts.
                probe = [sys.executable, "-m", "proxy", "--probe", f"--proxy-port={PROXY_PORT}"]
                ready = net.pod.run(probe, user=PROXY_UID, env=env, check=False, timeout=30)
                assert ready.returncode == 0, ready.stderr + log.read_text(errors="replace")
                yield Pod(net=net, entra=entra, backend=backend, proxy_log=log)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def app_home() -> Iterator[Path]:
    """A HOME the app's uid owns (az writes its configuration there)."""
    home = Path(tempfile.mkdtemp(prefix="app-home-"))
    shutil.chown(home, APP_UID, APP_UID)
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def as_app(pod: Pod) -> list[str]:
    """The command prefix that runs a program in the pod as the app's uid."""
    return pod.net.pod.argv([], user=APP_UID)


def run_in_pod(pod: Pod, argv: list[str], home: Path) -> dict[str, object]:
    return run_client(argv, clean_env(home), TESTS.parent, timeout=120, prefix=as_app(pod))


def assert_token(pod: Pod, result: dict[str, object], audience: str) -> None:
    assert_client_result(
        result,
        tenant_id=pod.entra.info.tenant_id,
        audience=audience,
        client_id=pod.entra.info.client_id,
    )
