"""Caller classification, the bounded tally behind the migration report, and its verdict.

The User-Agent strings are the ones the SDKs really send: captured from the clients the
end-to-end tests run (Python, MSAL, JavaScript, legacy Python), and built the way the
other SDKs' sources build them (Java, Go, .NET, Ruby, Node legacy), so the classifier
knows them before a client matrix runs them.
"""

from __future__ import annotations

import gc
import io
import json
import tracemalloc
from pathlib import Path

import pytest

import proxy
from proxy import callers
from proxy.callers import at_least, classify
from proxy.report.cli import render
from proxy.report.verdict import DAY, verdict
from proxy.requestlog import RequestLog
from proxy.usage import CallerUsage
from tests.support.clock import T0, FakeClock

FORM = "application/x-www-form-urlencoded; charset=UTF-8"
# (User-Agent, x-client-SKU, x-client-Ver, Content-Type) -> (client, version, supports, advice)
SEEN: list[tuple[tuple[str | None, ...], tuple[str, str, str, str]]] = [
    (  # azure-identity 1.27 sync: through MSAL's managed-identity code
        (
            "azsdk-python-identity/1.27.0 Python/3.11.7 (Linux-6.1-x86_64-with-glibc2.36)",
            "MSAL.Python",
            "1.39.0",
            None,
        ),
        ("azure-identity-python", "1.27.0", "yes", "direct"),
    ),
    (  # azure-identity 1.5, still in old images
        ("azsdk-python-identity/1.5.0 Python/3.11.2 (Linux-6.1-x86_64-with-glibc2.36)",),
        ("azure-identity-python", "1.5.0", "no", "upgrade"),
    ),
    (
        ("azsdk-python-identity/1.13.0b1 Python/3.9.0 (Linux)",),
        ("azure-identity-python", "1.13.0b1", "no", "upgrade"),
    ),
    (  # MSAL Python's ManagedIdentityClient with a requests.Session (also today's Azure CLI)
        ("python-requests/2.34.2", "MSAL.Python", "1.39.0"),
        ("msal-python", "1.39.0", "no", "replace"),
    ),
    (
        (
            "azsdk-js-identity/4.13.1 core-rest-pipeline/1.24.0 Node/20.20.2 (Linux 6.1; x64)",
            "msal.js.node",
            "5.6.0",
            "application/x-www-form-urlencoded;charset=utf-8",
        ),
        ("azure-identity-js", "4.13.1", "yes", "direct"),
    ),
    (
        ("azsdk-js-identity/3.1.4 core-rest-pipeline/1.10.0 Node/16.0.0",),
        ("azure-identity-js", "3.1.4", "no", "upgrade"),
    ),
    (  # msrestazure's MSIAuthentication, and Azure CLI 2.4x which used it
        ("python/3.11.2 (Linux-6.1-x86_64-with-glibc2.36) msrest/0.7.1 msrest_azure/0.6.4",),
        ("msrestazure", "0.6.4", "no", "replace"),
    ),
    (
        ("python/3.8.10 (Linux) msrest/0.6.21 msrest_azure/0.6.4 AZURECLI/2.40.0",),
        ("azure-cli", "2.40.0", "no", "replace"),
    ),
    (  # azure-identity (Java) ≥ 1.12: MSAL4J over the azure-core pipeline (UserAgentUtil)
        ("azsdk-java-azure-identity/1.18.4 (17.0.15; Linux; 6.1.0-18-amd64)",),
        ("azure-identity-java", "1.18.4", "yes", "direct"),
    ),
    (
        ("azsdk-java-azure-identity/1.8.3 (11.0.2; Linux; 5.4)",),
        ("azure-identity-java", "1.8.3", "no", "upgrade"),
    ),
    (  # HttpURLConnection's default: azure-client-authentication MSICredentials, bare msal4j
        ("Java/17.0.15",),
        ("java-runtime", "17.0.15", "unknown", "identify"),
    ),
    (  # msal4j with its own HTTP client still says so in its headers
        ("Java/17.0.15", "MSAL.Java", "1.23.1"),
        ("msal-java", "1.23.1", "no", "replace"),
    ),
    (  # azidentity: azcore's telemetry policy, `v` in the version, MSAL Go underneath
        ("azsdk-go-azidentity/v1.15.0 (go1.26.8; linux)", "MSAL.Go", "1.10.1"),
        ("azidentity-go", "1.15.0", "yes", "direct"),
    ),
    (  # an application id prefix (up to 24 characters) before the SDK's token
        ("orders-service azsdk-go-azidentity/v1.2.2 (go1.21.0; linux)",),
        ("azidentity-go", "1.2.2", "no", "upgrade"),
    ),
    (
        ("azsdk-go-azidentity/v1.3.0-beta.1 (go1.20; linux)",),
        ("azidentity-go", "1.3.0-beta.1", "no", "upgrade"),
    ),
    (("Go-http-client/1.1", "MSAL.Go", "1.10.1"), ("msal-go", "1.10.1", "no", "replace")),
    (("Go-http-client/1.1",), ("go-http-client", "1.1", "unknown", "identify")),
    (  # adal's fixed token: the adal release cannot be read from it
        ("Go/go1.26.8 (amd64-linux) go-autorest/adal/v1.0.0",),
        ("go-autorest-adal", "", "no", "replace"),
    ),
    (  # Azure.Core: InformationalVersion without the commit hash, or with it (older cores)
        ("azsdk-net-Identity/1.13.2 (.NET 8.0.4; Ubuntu 22.04.4 LTS)", "MSAL.NetCore", "4.61.3"),
        ("azure-identity-dotnet", "1.13.2", "yes", "direct"),
    ),
    (
        ("azsdk-net-Identity/1.9.0-beta.2+7f0b3c2 (.NET 6.0.10; Linux 5.15)",),
        ("azure-identity-dotnet", "1.9.0-beta.2", "no", "upgrade"),
    ),
    (
        ("azsdk-net-Identity/1.9.0+7f0b3c2 (.NET 6.0; Linux)",),
        ("azure-identity-dotnet", "1.9.0", "yes", "direct"),
    ),
    (  # Azure.Identity 1.10.3, as the real client sent it (tests/test_e2e_dotnet_clients.py)
        ("azsdk-net-Identity/1.10.3 (.NET Core 3.1.23; Linux 6.1.0-18-amd64 #1 SMP)",),
        ("azure-identity-dotnet", "1.10.3", "yes", "direct"),
    ),
    ((None, "MSAL.Desktop", "4.40.0"), ("msal-dotnet", "4.40.0", "no", "replace")),
    ((None, "MSAL.NetCore", "4.84.0"), ("msal-dotnet", "4.84.0", "no", "replace")),
    (  # MSAL.NET 4.56.0 and 4.83.3, as sent: no agent, no SKU, `Accept: application/json`
        (None, None, None, None, "application/json"),
        ("msal-dotnet", "", "no", "replace"),
    ),
    (  # the Rust crate (typespec_client_core's agent: crate name without `azure_`)
        ("azsdk-rust-identity/0.27.0 (1.85.0; linux; x86_64)",),
        ("azure-identity-rust", "0.27.0", "yes", "direct"),
    ),
    (
        ("azsdk-cpp-identity/1.6.0 (Linux 6.1.0 x86_64)",),
        ("azure-identity-cpp", "1.6.0", "yes", "direct"),
    ),
    (("azsdk-cpp-identity/1.5.1 (Linux)",), ("azure-identity-cpp", "1.5.1", "no", "upgrade")),
    (  # a language not in the table: named by it, no verdict
        ("azsdk-swift-identity/1.2.0 (Darwin 23.0)",),
        ("azure-identity-swift", "1.2.0", "unknown", "upgrade"),
    ),
    (
        ("Azure-SDK-For-Ruby/ms_rest_azure/0.12.0",),
        ("ms-rest-azure-ruby", "0.12.0", "no", "replace"),
    ),
    (  # ms-rest-nodeauth: node-fetch's default agent, and a form Content-Type on its GET
        ("node-fetch/1.0 (+https://github.com/bitinn/node-fetch)", None, None, FORM),
        ("ms-rest-nodeauth", "", "no", "replace"),
    ),
    (
        ("node-fetch/1.0 (+https://github.com/bitinn/node-fetch)",),
        ("node-http", "1.0", "unknown", "identify"),
    ),
    ((None,), ("no-user-agent", "", "unknown", "identify")),  # AppAuthentication: none at all
    ((None, "msal.js.node", "2.16.0"), ("msal-js", "2.16.0", "no", "replace")),
    (("python-requests/2.31.0",), ("python-requests", "2.31.0", "unknown", "identify")),
    (("curl/7.88.1",), ("curl", "7.88.1", "unknown", "identify")),
    (("Python-urllib/3.11",), ("python-urllib", "3.11", "unknown", "identify")),
    (("Mozilla/5.0 (X11; Linux x86_64)",), ("unknown", "", "unknown", "identify")),
]  # fmt: skip


@pytest.mark.parametrize(("headers", "expected"), SEEN, ids=[e[0] for _, e in SEEN])
def test_real_user_agents_are_classified(
    headers: tuple[str | None, ...], expected: tuple[str, str, str, str]
) -> None:
    found = classify(*headers)
    assert (found.family.name, found.version, found.supports, found.advice_kind) == expected


def test_every_family_is_reachable_and_named_once() -> None:
    names = [f.name for f in callers.FAMILIES]
    assert len(names) == len(set(names))
    found = [classify(*headers).family for headers, _ in SEEN]
    reached = {f.name for f in found if f.metric_label != callers.OTHER_SDK_LABEL}
    assert reached | {"other"} == set(names)


def test_advice_names_the_minimum_or_the_replacement() -> None:
    assert classify("azsdk-python-identity/1.5.0").advice == (
        "upgrade to ≥ 1.13.0 (WorkloadIdentityCredential or DefaultAzureCredential), "
        "then remove the sidecar"
    )
    assert classify("azsdk-python-identity/1.27.0").advice == (
        f"{callers.DIRECT} (WorkloadIdentityCredential or DefaultAzureCredential, since 1.13.0)"
    )
    assert classify("azsdk-go-azidentity/v1.2.2 (go1.21.0; linux)").advice.startswith(
        "upgrade to ≥ 1.3.0 (NewWorkloadIdentityCredential or NewDefaultAzureCredential)"
    )
    assert classify("azsdk-rust-identity/1.0.0").advice.endswith(
        "(WorkloadIdentityCredential, since 0.22.0)"
    )
    assert classify("azsdk-net-Identity/1.8.2 (.NET 6.0; Linux)").advice.startswith(
        "upgrade to ≥ 1.9.0 (WorkloadIdentityCredential"
    )
    net = classify(None, None, None, None, "application/json").advice
    assert net.startswith("replace library MSAL.NET (managed identity) with Azure.Identity ≥ 1.9.0")
    assert classify("azsdk-swift-identity/1.2.0").advice.startswith(
        "an Azure Identity library for swift not known here: upgrade it to a release with "
        "WorkloadIdentityCredential"
    )
    legacy = classify("Go/go1.22 (amd64-linux) go-autorest/adal/v1.0.0").advice
    assert legacy.startswith("replace library go-autorest/adal with azidentity ≥ 1.3.0")
    assert "azure-identity ≥ 1.13.0" in classify("x", "MSAL.Python", "1.31.0").advice
    assert "AppAuthentication" in classify("").advice


@pytest.mark.parametrize(
    ("version", "minimum", "expected"),
    [
        ("1.13.0", "1.13.0", True),
        ("1.13.1", "1.13.0", True),
        ("1.12.9", "1.13.0", False),
        ("2.0", "1.13.0", True),
        ("1.13.0b2", "1.13.0", False),
        ("1.9.0-beta.3", "1.9.0", False),
        ("1.9.0.1", "1.9.0", True),
        ("v1.3.0", "1.3.0", True),
        ("1.10.0", "1.9.0", True),  # numbers, not strings
        ("beta", "1.9.0", False),
    ],
)
def test_version_comparison(version: str, minimum: str, expected: bool) -> None:
    assert at_least(version, minimum) is expected


# -- hostile headers ----------------------------------------------------------------------


def hostile_agents(count: int) -> list[str]:
    return [
        "azsdk-python-identity/1.0." + str(i) if i % 3 == 0 else f"evil\x00\x1b[31m\n{i}\u2028"
        for i in range(count)
    ]


def test_hostile_user_agents_keep_labels_and_entries_bounded() -> None:
    usage = CallerUsage(clock=FakeClock(), limit=16, remembered=128)
    stream = io.StringIO()
    log = RequestLog("info", "json", stream)
    for agent in [*hostile_agents(10_000), "A" * 10_240, "\r\n\t\x7f" * 100]:
        fields = usage.observe({"User-Agent": agent, "x-client-SKU": agent[:40]})
        log.write("received token request", "GET", "/t", 200, 0.001, None, fields)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 10_002
    assert {line["client"] for line in lines} <= {f.name for f in callers.FAMILIES}
    assert all(len(line["client_version"] or "") <= 32 for line in lines)
    assert set(usage.by_label) <= {
        (f.name, s) for f in callers.FAMILIES for s in ("yes", "no", "unknown")
    }
    assert len(usage.by_label) <= 3
    report = usage.report()
    assert len(report["callers"]) == 17  # 16 kept, then "other"
    other = next(c for c in report["callers"] if c["client"] == "other")
    assert sum(c["requests"] for c in report["callers"]) == 10_002
    assert other["requests"] > 3000
    assert usage.remembered() <= 3 * 128


def test_memory_stays_flat_under_distinct_user_agents() -> None:
    """The remembered agents are bounded (a table clears at 10,000): what the proxy's code
    holds swings within that bound however many distinct agents come, it does not climb.
    Only the proxy's own allocations are counted: other threads of a test worker may
    allocate meanwhile."""
    usage = CallerUsage(clock=FakeClock())
    agents = hostile_agents(60_000)
    proxy_code = [tracemalloc.Filter(True, str(Path(proxy.__file__).parent / "*"))]
    held = []
    tracemalloc.start()
    try:
        for start in range(0, len(agents), 10_000):
            for agent in agents[start : start + 10_000]:
                usage.observe({"User-Agent": agent})
            gc.collect()
            snapshot = tracemalloc.take_snapshot().filter_traces(proxy_code)
            held.append(sum(stat.size for stat in snapshot.statistics("filename")))
    finally:
        tracemalloc.stop()
    first, later = max(held[:3]), max(held[3:])
    assert later < first + 128 * 1024, f"bytes held after each 10,000 agents: {held}"


# -- the report and its verdict, on an injected clock ----------------------------------------

PY_NEW = {"User-Agent": "azsdk-python-identity/1.27.0 Python/3.11", "x-client-SKU": "MSAL.Python"}
PY_OLD = {"User-Agent": "azsdk-python-identity/1.5.0 Python/3.8"}
LEGACY = {"User-Agent": "python/3.8 (Linux) msrest/0.6.21 msrest_azure/0.6.4"}


def mixed_history(clock: FakeClock) -> CallerUsage:
    usage = CallerUsage(clock=clock)
    for day, headers in ((0, PY_OLD), (1, LEGACY), (1, PY_NEW), (2, PY_OLD), (3, PY_NEW)):
        clock.now = T0 + day * DAY + 60
        usage.observe(headers)
    return usage


def test_the_report_for_a_mixed_history() -> None:
    clock = FakeClock()
    usage = mixed_history(clock)
    clock.now = T0 + 4 * DAY
    report = usage.report()
    assert report["started_at"] == T0 and report["generated_at"] == T0 + 4 * DAY
    assert report["last_token_request_at"] == T0 + 3 * DAY + 60
    rows = {(c["client"], c["version"]): c for c in report["callers"]}
    assert set(rows) == {
        ("azure-identity-python", "1.27.0"),
        ("azure-identity-python", "1.5.0"),
        ("msrestazure", "0.6.4"),
    }
    old = rows["azure-identity-python", "1.5.0"]
    assert (old["requests"], old["first_seen"], old["last_seen"]) == (2, T0 + 60, T0 + 2 * DAY + 60)
    assert old["advice"] == (
        "upgrade to ≥ 1.13.0 (WorkloadIdentityCredential or DefaultAzureCredential), "
        "then remove the sidecar"
    )
    assert rows["msrestazure", "0.6.4"]["advice_kind"] == "replace"
    assert rows["azure-identity-python", "1.27.0"]["supports_workload_identity"] == "yes"
    text = render(json.loads(json.dumps(report)), days=7)
    assert "azure-identity (Python) [azure-identity-python] 1.5.0: 2 requests, first " in text
    assert "first 2023-11-14 22:14:20 UTC, last 2023-11-16 22:14:20 UTC" in text
    assert (
        "    replace library msrestazure (MSIAuthentication) with azure-identity ≥ 1.13.0" in text
    )
    assert f"    {callers.DIRECT}" in text
    assert text.endswith(
        "Verdict: the sidecar is still needed: 3 caller(s) asked for tokens in the last 7 days, "
        "the last 23 hours ago; 2 of them cannot use workload identity yet"
    )
    decided = json.loads(render(report, days=7, as_json=True))
    assert decided["verdict"]["removable"] is False
    assert decided["callers"] == report["callers"]


def test_the_sidecar_can_go_after_quiet_days() -> None:
    clock = FakeClock()
    report = mixed_history(clock).report()
    last = T0 + 3 * DAY + 60
    assert not verdict(report, last + 7 * DAY - 1).removable
    quiet = verdict(report, last + 7 * DAY)
    assert quiet.removable and quiet.text.startswith("no token request for 7 days: the sidecar")
    assert verdict(report, last + 2 * DAY, days=2).removable


def test_a_quiet_proxy_is_judged_by_its_uptime() -> None:
    clock = FakeClock()
    report = CallerUsage(clock=clock).report()
    young = verdict(report, T0 + 2 * DAY)
    assert not young.removable
    assert young.text == (
        "no token request since the proxy started 2 days ago: watch it for 7 days before "
        "removing the sidecar"
    )
    assert verdict(report, T0 + 7 * DAY).removable


def test_the_memo_never_confuses_callers_that_share_an_agent() -> None:
    usage = CallerUsage(clock=FakeClock())
    requests_agent = "python-requests/2.32.3"
    for version in ("1.31.0", "1.32.0", "1.31.0"):
        usage.observe({"User-Agent": requests_agent, "x-client-SKU": "MSAL.Python",
                       "x-client-Ver": version})  # fmt: skip
    usage.observe({"User-Agent": requests_agent})
    for sku in ("MSAL.Python", None):
        usage.observe(
            {"User-Agent": PY_NEW["User-Agent"], **({"x-client-SKU": sku} if sku else {})}
        )
    rows = {(c["client"], c["version"]): c["requests"] for c in usage.report()["callers"]}
    assert rows == {
        ("msal-python", "1.31.0"): 2,
        ("msal-python", "1.32.0"): 1,
        ("python-requests", "2.32.3"): 1,
        ("azure-identity-python", "1.27.0"): 2,
    }
    assert usage.by_label == {
        ("msal-python", "no"): 3,
        ("python-requests", "unknown"): 1,
        ("azure-identity-python", "yes"): 2,
    }


def test_other_languages_are_named_but_share_one_metric_label() -> None:
    """Each language its own row in the report, at most 64 rows as for any caller; one
    metric series for all of them, however many languages callers invent."""
    usage = CallerUsage(clock=FakeClock(), limit=16)
    letters = "abcdefghijklmnopqrstuvwxyz"
    for i in range(2000):
        language = letters[i % 26] + letters[i // 26 % 26] + letters[i // 676 % 26]
        usage.observe({"User-Agent": f"azsdk-{language}-identity/1.0.{i % 3}"})
    usage.observe({"User-Agent": "azsdk-swift-identity/1.2.0 (Darwin 23.0)"})
    assert usage.by_label == {(callers.OTHER_SDK_LABEL, "unknown"): 2001}
    report = usage.report()
    assert len(report["callers"]) == 17
    rows = {(c["client"], c["version"]): c for c in report["callers"]}
    assert rows["other", None]["requests"] == 2001 - 16
    first = rows["azure-identity-aaa", "1.0.0"]
    assert (first["title"], first["minimum_version"]) == ("Azure Identity (aaa)", None)
    assert first["supports_workload_identity"] == "unknown"


def test_a_dotnet_and_a_rust_caller_in_the_report() -> None:
    """The report's own rendering of the .NET clients the end-to-end tests run (Azure.Identity
    1.10.3 and MSAL.NET 4.83.3, their headers as sent) and of a Rust caller."""
    clock = FakeClock()
    usage = CallerUsage(clock=clock)
    net = "azsdk-net-Identity/1.10.3 (.NET Core 3.1.23; Linux 6.1.0-18-amd64 #1 SMP)"
    usage.observe({"User-Agent": net, "Metadata": "true"})
    usage.observe({"Metadata": "true", "Accept": "application/json"})
    usage.observe({"User-Agent": "azsdk-rust-identity/0.27.0 (1.85.0; linux; x86_64)"})
    usage.observe({"Metadata": "true"})  # AppAuthentication: no agent, no Accept
    clock.now = T0 + 60
    text = render(json.loads(json.dumps(usage.report())), days=7)
    assert "Azure.Identity (.NET) [azure-identity-dotnet] 1.10.3: 1 requests, first " in text
    assert "MSAL.NET (managed identity) [msal-dotnet] version unknown: 1 requests" in text
    assert "azure_identity (Rust) [azure-identity-rust] 0.27.0: 1 requests" in text
    assert "no User-Agent [no-user-agent] version unknown: 1 requests" in text
    assert "; 2 of them cannot use workload identity yet" in text
    assert usage.by_label == {
        ("azure-identity-dotnet", "yes"): 1,
        ("msal-dotnet", "no"): 1,
        ("azure-identity-rust", "yes"): 1,
        ("no-user-agent", "unknown"): 1,
    }
