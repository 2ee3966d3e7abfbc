"""The migration guide's flow on a real cluster, with the native sidecar and `--classic`.

A Deployment run through `imds-proxy inject`; the app calls 169.254.169.254 with no override
and gets a token that the in-pod fake Entra ID issued after checking the kubelet's projected
token against the cluster's real keys; `kubectl logs` and `kubectl describe` show what the
guide says they show; the app starts soon after the proxy listens; and deleting the pod
finishes within its grace period, the proxy exiting cleanly (with `--classic`, after the
app got its tokens during its own shutdown).
"""

from __future__ import annotations

import datetime
import subprocess
import time
from typing import Any

import pytest

from tests.cluster.kube import Kube
from tests.cluster.measure import record
from tests.cluster.workload import (
    APP,
    ARM,
    CLIENT_ID,
    PROXY,
    PROXY_INIT,
    TENANT_ID,
    Workload,
    deploy,
    json_lines,
)

START_DELAY_LIMIT = 2.0
"""Native sidecar: the app starts within this many seconds of the proxy accepting connections."""


def app_lines(kube: Kube, namespace: str, pod: str, event: str, timeout: float) -> list[Any]:
    """The app's log lines of one event, waiting (bounded) for at least one."""
    found: list[Any] = []

    def seen() -> bool:
        lines = json_lines(kube.logs(namespace, pod, APP))
        found[:] = [line for line in lines if line.get("event") == event]
        return bool(found)

    kube.wait_for(seen, timeout, f"the app's {event!r} line")
    return found


def timestamp(line: dict[str, Any]) -> float:
    return datetime.datetime.fromisoformat(str(line["timestamp"])).timestamp()


def follow_logs(kube: Kube, namespace: str, pod: str, container: str) -> subprocess.Popen[str]:
    """`kubectl logs -f`: it ends when the container does, so it sees the last lines."""
    return subprocess.Popen(
        kube.command("-n", namespace, "logs", "-f", pod, "-c", container),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def collected(proc: subprocess.Popen[str], timeout: float) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=10)
    return out


@pytest.mark.parametrize("classic", [False, True], ids=["native", "classic"])
def test_the_guide_flow(kube: Kube, namespace: str, classic: bool) -> None:
    grace = 30
    workload = Workload(
        namespace, kube.jwks(), classic=classic, grace=grace, shutdown_requests=6 if classic else 0
    )
    pod = deploy(kube, workload)

    def evidence() -> str:
        return kube.evidence(namespace, pod)

    # The app's plain request to 169.254.169.254 got a token, issued for this identity.
    tokens = app_lines(kube, namespace, pod, "token", 60)
    got = [t for t in tokens if t.get("status") == 200]
    assert got, f"the app got no token: {tokens}\n{evidence()}"
    assert got[0]["claims"]["aud"] == ARM
    assert got[0]["claims"]["appid"] == CLIENT_ID
    assert got[0]["claims"]["tid"] == TENANT_ID

    # The guide's verification step: the proxy's log shows the request and the exchange.
    proxy_log = json_lines(kube.logs(namespace, pod, PROXY))
    events = [str(line.get("event")) for line in proxy_log]
    for expected in ("received token request", "successfully acquired token"):
        assert expected in events, f"no {expected!r} line in the proxy's log\n{evidence()}"
    # A redirect-mode pod does not use the App Service endpoint: not a word about it.
    assert not [e for e in events if "App Service" in e], f"{events}\n{evidence()}"

    # kubectl describe: the init container completed, the proxy runs and is ready.
    status = kube.json("-n", namespace, "get", "pod", pod)["status"]
    statuses = {
        s["name"]: s
        for s in [*status.get("initContainerStatuses", []), *status["containerStatuses"]]
    }
    init_state = statuses[PROXY_INIT]["state"]
    assert init_state.get("terminated", {}).get("reason") == "Completed", evidence()
    assert "running" in statuses[PROXY]["state"] and statuses[PROXY]["ready"], evidence()
    described = kube.describe(namespace, f"pod/{pod}")
    assert "Reason:       Completed" in described, described

    # How long after the proxy began accepting connections the app started.
    listening = [line for line in proxy_log if line.get("event") == "starting the proxy server"]
    app_started = app_lines(kube, namespace, pod, "app started", 10)[0]["t"]
    delay = app_started - timestamp(listening[0])
    record(f"app start after proxy listening, {'classic' if classic else 'native'}", delay)
    if not classic:
        assert delay < START_DELAY_LIMIT, f"the app started {delay:.1f}s after\n{evidence()}"

    # Deletion: within the grace period, the proxy stopping cleanly.
    proxy_follow = follow_logs(kube, namespace, pod, PROXY)
    app_follow = follow_logs(kube, namespace, pod, APP)
    time.sleep(1)  # both streams attached
    started = time.monotonic()
    kube.run("-n", namespace, "scale", "deployment", workload.name, "--replicas=0")
    kube.run(
        "-n",
        namespace,
        "wait",
        "--for=delete",
        f"pod/{pod}",
        f"--timeout={grace + 30}s",
        timeout=grace + 40,
    )
    took = time.monotonic() - started
    record(f"pod deletion, {'classic' if classic else 'native'}", took)
    proxy_end = collected(proxy_follow, 20)
    app_end = collected(app_follow, 20)
    assert took < grace, f"deletion took {took:.1f}s (grace {grace}s)\n{proxy_end}\n{app_end}"
    stopped = [x for x in json_lines(proxy_end) if x.get("event") == "stopped the proxy server"]
    assert stopped, f"the proxy logged no clean stop:\n{proxy_end}"
    if classic:
        during = [x for x in json_lines(app_end) if x.get("event") == "shutdown token"]
        assert len(during) == workload.shutdown_requests, app_end
        assert all(x["status"] == 200 for x in during), f"tokens during shutdown:\n{app_end}"
