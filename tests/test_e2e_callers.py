"""Real clients through the real proxy are told apart, counted and judged in the report.

One proxy process serves the current azure-identity, MSAL's ManagedIdentityClient,
@azure/identity (JavaScript), azure-identity 1.5, msrestazure and ms-rest-nodeauth, each
unmodified and reaching it the way the other end-to-end tests do. Then its request log, its metrics,
`GET /report` and `imds-proxy report` (text and JSON) must all name each caller with its
version and the right verdict. Hostile User-Agents sent to the same process must leave the
metric's labels bounded, its memory flat and every log line valid JSON.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import azure.identity
import msal
import pytest
import requests
from azure.identity import ManagedIdentityCredential
from prometheus_client.parser import text_string_to_metric_families

from harness.proxy_process import ProxyProcess
from proxy.callers import DIRECT, FAMILIES
from proxy.imds import TOKEN_PATH
from tests.support.js_clients import node_get_token
from tests.support.legacy_sdks import AZURE_IDENTITY_1_5, MSRESTAZURE, run_old
from tests.support.sdk_clients import JS_PROJECT

ARM = "https://management.azure.com"
VAULT = "https://vault.azure.net"
HOSTILE = 10_000


def js_version() -> str:
    package = JS_PROJECT / "node_modules" / "@azure" / "identity" / "package.json"
    version: str = json.loads(package.read_text())["version"]
    return version


@pytest.fixture(scope="module")
def nodeauth(js_sdk: Path) -> Path:
    """The legacy @azure/ms-rest-nodeauth beside @azure/identity (tests/js/package.json)."""
    if not (JS_PROJECT / "node_modules" / "@azure" / "ms-rest-nodeauth").exists():
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=JS_PROJECT,
            check=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
    return JS_PROJECT / "ms_rest_nodeauth.mjs"


def imds_proxy(proxy: ProxyProcess, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "report", f"--proxy-port={proxy.port}", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def by_client(metrics: str) -> dict[tuple[str, str], float]:
    found = {}
    for family in text_string_to_metric_families(metrics):
        if family.name == "imds_proxy_token_requests_by_client":
            for sample in family.samples:
                labels = sample.labels
                found[labels["client"], labels["supports_workload_identity"]] = sample.value
    return found


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js runs the JavaScript SDK")
def test_real_clients_are_classified_and_judged(
    proxy: ProxyProcess,
    old_sdks: dict[str, Path],
    js_sdk: Path,
    nodeauth: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", proxy.base)
    for name in (
        "MSI_ENDPOINT",
        "IDENTITY_ENDPOINT",
        "AZURE_CLIENT_ID",
        "AZURE_FEDERATED_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    ManagedIdentityCredential().get_token(ARM + "/.default")
    managed = msal.ManagedIdentityClient(
        msal.SystemAssignedManagedIdentity(), http_client=requests.Session()
    )
    assert "access_token" in managed.acquire_token_for_client(resource=VAULT)
    assert "token" in node_get_token(js_sdk, proxy, ARM)
    run_old(old_sdks["azure-identity"], AZURE_IDENTITY_1_5, proxy, ARM)
    run_old(old_sdks["msrestazure"], MSRESTAZURE, proxy, VAULT + "/")
    endpoint = proxy.base + TOKEN_PATH  # its IMDS address is an option: no HTTP_PROXY support
    done = subprocess.run(["node", str(nodeauth), endpoint, ARM], capture_output=True, timeout=60)
    assert json.loads(done.stdout.decode().splitlines()[-1])["tokenType"] == "Bearer", done

    expected = {  # (client, version): (supports workload identity, advice)
        ("azure-identity-python", azure.identity.__version__): ("yes", DIRECT),
        ("msal-python", msal.__version__): ("no", "replace library MSAL Python"),
        ("azure-identity-js", js_version()): ("yes", DIRECT),
        ("azure-identity-python", "1.5.0"): (
            "no",
            "upgrade to ≥ 1.13.0 (WorkloadIdentityCredential or ",
        ),
        ("msrestazure", "0.6.4"): ("no", "replace library msrestazure (MSIAuthentication) with"),
        ("ms-rest-nodeauth", None): ("no", "replace library @azure/ms-rest-nodeauth with"),
    }
    report = requests.get(f"http://127.0.0.1:{proxy.port}/report", timeout=10).json()
    seen = {(c["client"], c["version"]): c for c in report["callers"]}
    assert set(seen) == set(expected)
    for key, (supports, advice) in expected.items():
        assert seen[key]["supports_workload_identity"] == supports, key
        assert seen[key]["advice"].startswith(advice), (key, seen[key]["advice"])
        assert seen[key]["requests"] >= 1
    assert seen["azure-identity-python", "1.5.0"]["requests"] == 2  # its bare probe, then the token
    assert report["token_requests"] == sum(c["requests"] for c in report["callers"])

    assert by_client(proxy.metrics()) == {
        ("azure-identity-js", "yes"): 1,
        ("azure-identity-python", "yes"): 1,
        ("azure-identity-python", "no"): 2,
        ("msal-python", "no"): 1,
        ("msrestazure", "no"): 1,
        ("ms-rest-nodeauth", "no"): 1,
    }

    text = imds_proxy(proxy)
    assert f"azure-identity (Python) [azure-identity-python] {azure.identity.__version__}: " in text
    assert "msrestazure (MSIAuthentication) [msrestazure] 0.6.4: 1 requests, first " in text
    assert (
        "Verdict: the sidecar is still needed: 6 caller(s) asked for tokens in the last 7 days"
        in text
    )
    printed: dict[str, Any] = json.loads(imds_proxy(proxy, "--json"))
    assert printed["verdict"]["removable"] is False
    assert {(c["client"], c["version"]) for c in printed["callers"]} == set(expected)
    proxy.stop()  # request lines are buffered up to 0.2 s; stopping flushes them
    lines = [line for line in proxy.logs() if line["event"] == "received token request"]
    assert {(line["client"], line["client_version"]) for line in lines} == set(expected)


def rss_kib(proxy: ProxyProcess) -> int:
    assert proxy.proc is not None
    status = Path(f"/proc/{proxy.proc.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


async def send_hostile(proxy: ProxyProcess, agents: list[bytes]) -> dict[int, int]:
    """Token requests with these raw User-Agent bytes, 16 connections at a time, bounded in
    count and time; returns how many got each status. Raw bytes: HTTP clients refuse to
    send what a hostile caller can."""
    target = proxy.url(ARM).removeprefix(proxy.base).encode()
    queue = list(reversed(agents))
    statuses: dict[int, int] = {}

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            while queue:
                agent = queue.pop()
                writer.write(
                    b"GET " + target + b" HTTP/1.1\r\nHost: 169.254.169.254\r\n"
                    b"Metadata: true\r\nUser-Agent: " + agent + b"\r\n"
                    b"x-client-SKU: " + agent[:64] + b"\r\n\r\n"
                )
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                statuses[status] = statuses.get(status, 0) + 1
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                if head.startswith(b"HTTP/1.0") or b"Connection: close" in head:
                    writer.close()  # the parser refused the request and closes: reconnect
                    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        finally:
            writer.close()

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(16))), timeout=180)
    return statuses


def test_hostile_user_agents_stay_bounded(proxy: ProxyProcess) -> None:
    """10,000 distinct agents: tabs, bytes that are not UTF-8, U+2028, invented versions;
    and some the HTTP parser refuses before the proxy sees them (control characters, more
    than 8 KiB): those get 400 and change nothing."""
    odd = "\t\u2028\u00e9".encode() + b"\xff\xfe"
    agents = [
        b"azsdk-python-identity/1.%d.%d " % (i, i) + odd if i % 2 else b"hostile-%d " % i + odd
        for i in range(HOSTILE)
    ]
    refused = [b"A" * 10_240, b"azsdk-net-Identity/1.0 \x01\x1b[0m", b"x\x7f", b"\x00"]
    first = asyncio.run(send_hostile(proxy, agents[: HOSTILE // 2] + refused))
    halfway = rss_kib(proxy)
    second = asyncio.run(send_hostile(proxy, agents[HOSTILE // 2 :]))
    grown = rss_kib(proxy) - halfway
    assert grown < 4096, f"RSS grew {grown} KiB over the second {HOSTILE // 2} distinct agents"
    assert first == {200: HOSTILE // 2, 400: len(refused)} and second == {200: HOSTILE // 2}

    labels = by_client(proxy.metrics())
    names = {f.name for f in FAMILIES}
    assert {client for client, _ in labels} <= names
    python = "azure-identity-python"
    assert set(labels) == {(python, "no"), (python, "yes"), ("unknown", "unknown")}
    assert sum(labels.values()) == HOSTILE
    report = requests.get(f"http://127.0.0.1:{proxy.port}/report", timeout=10).json()
    assert len(report["callers"]) == 65  # 64 kept, then "other"
    assert all(len(c["version"] or "") <= 32 for c in report["callers"])
    proxy.stop()
    lines = [line for line in proxy.logs() if line["event"] == "received token request"]
    assert len(lines) == HOSTILE  # and every line of the log parsed as JSON (logs() checks)
    assert {line["client"] for line in lines} == {"azure-identity-python", "unknown"}
