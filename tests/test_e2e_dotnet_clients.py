""".NET SDKs, unmodified, get their tokens through the real proxy process on loopback.

Azure.Identity and MSAL.NET hard-code the IMDS address; .NET's HttpClient honours
HTTP_PROXY, so they send the proxy absolute-form requests (routed by path), in a clean
environment (no IDENTITY_ENDPOINT, MSI_ENDPOINT or AZURE_* that would select another source).
The clients (tests/support/dotnet_clients.py):

- Azure.Identity 1.10.3 ManagedIdentityCredential and DefaultAzureCredential, whose chain
  reaches managed identity when nothing else is configured and gives IMDS 1 s per try;
- MSAL.NET ManagedIdentityApplication at 4.56.0 and 4.83.3 (4.79 and later take the later of
  `expires_in` and `expires_on`: the expiry printed must still be the token's own).

Each prints the token, the expiry it computed and its own version; all are checked.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests

from harness.fake_entra import FakeEntra
from harness.proxy_process import ProxyProcess
from tests.support.dotnet_clients import DOTNET_PROJECT, DOTNET_SDKS, DotnetClients
from tests.support.fixtures import SECOND_CLIENT_ID
from tests.support.jwt_claims import assert_client_result, assert_issued_to
from tests.support.sdk_clients import clean_env, proxied_env, run_client

ARM = "https://management.azure.com"
VAULT = "https://vault.azure.net"
UNKNOWN_CLIENT_ID = "7d1b0c9e-3f2a-4b5c-8d6e-000000000000"


def dotnet_get_token(
    dotnet: DotnetClients,
    client: str,
    env: dict[str, str],
    resource: str,
    client_id: str | None = None,
) -> dict[str, object]:
    app, sdk, version = DOTNET_SDKS[client]
    result = run_client(dotnet.argv(app, sdk, resource, client_id), env, DOTNET_PROJECT)
    if "error" not in result:
        assert result["sdk_version"] == version, result
    return result


@pytest.mark.parametrize("client", list(DOTNET_SDKS))
def test_dotnet_client_system_assigned(
    client: str, dotnet: DotnetClients, proxy: ProxyProcess, fake_entra: FakeEntra, tmp_path: Path
) -> None:
    result = dotnet_get_token(dotnet, client, proxied_env(tmp_path, proxy.base), ARM)
    assert_client_result(
        result,
        tenant_id=fake_entra.info.tenant_id,
        audience=ARM,
        client_id=fake_entra.info.client_id,
    )
    assert fake_entra.stats()["token_requests"]["total"] == 1


@pytest.mark.parametrize("client", list(DOTNET_SDKS))
def test_dotnet_client_user_assigned(
    client: str, dotnet: DotnetClients, proxy: ProxyProcess, fake_entra: FakeEntra, tmp_path: Path
) -> None:
    env = proxied_env(tmp_path, proxy.base)
    result = dotnet_get_token(dotnet, client, env, VAULT, SECOND_CLIENT_ID)
    assert_client_result(
        result,
        tenant_id=fake_entra.info.tenant_id,
        audience=VAULT,
        client_id=SECOND_CLIENT_ID,
    )
    assert fake_entra.stats()["token_requests"]["by_client_id"] == {SECOND_CLIENT_ID: 1}


def test_azure_identity_pointed_by_pod_identity_authority_host(
    dotnet: DotnetClients, proxy: ProxyProcess, fake_entra: FakeEntra, tmp_path: Path
) -> None:
    """Azure.Identity's own override of the IMDS address, no HTTP proxy involved."""
    env = clean_env(tmp_path, AZURE_POD_IDENTITY_AUTHORITY_HOST=proxy.base)
    result = dotnet_get_token(dotnet, "ManagedIdentityCredential", env, ARM)
    assert_client_result(
        result,
        tenant_id=fake_entra.info.tenant_id,
        audience=ARM,
        client_id=fake_entra.info.client_id,
    )


def token_lines(proxy: ProxyProcess) -> list[dict[str, object]]:
    """The proxy's request lines for token requests (it is stopped first: they are flushed)."""
    proxy.stop()
    return [line for line in proxy.logs() if line["event"] == "received token request"]


@pytest.mark.parametrize(
    ("client", "error_type"),
    [
        ("ManagedIdentityCredential", "Azure.Identity.CredentialUnavailableException"),
        ("MSAL.NET-4.83", "Microsoft.Identity.Client.MsalServiceException"),
    ],
)
def test_unknown_identity_is_reported_as_not_assigned(
    client: str, error_type: str, dotnet: DotnetClients, proxy: ProxyProcess, tmp_path: Path
) -> None:
    """IMDS-COMPAT §6: a 400 whose body says `Identity not found` is what Azure.Identity reads
    as "this identity is not assigned here" (unavailable, so a chain goes on); MSAL.NET
    reports it as the service's answer. Neither retries it."""
    env = proxied_env(tmp_path, proxy.base)
    result = dotnet_get_token(dotnet, client, env, ARM, UNKNOWN_CLIENT_ID)
    assert result["error_type"] == error_type, result
    assert "Identity not found" in str(result["error"])
    if client == "ManagedIdentityCredential":
        assert "has not been assigned to this resource" in str(result["error"])
    assert [line["status"] for line in token_lines(proxy)] == [400]


def test_default_azure_credential_outlasts_a_slow_entra(
    dotnet: DotnetClients, proxy: ProxyProcess, fake_entra: FakeEntra, tmp_path: Path
) -> None:
    """DefaultAzureCredential gives IMDS 1 s per try. With Entra ID taking 2.5 s, its first
    try gives up; the proxy finishes that exchange anyway, and a later try is answered
    with its token: one exchange in all, and the chain never falls through."""
    fake_entra.behave(delay=2.5)
    env = proxied_env(tmp_path, proxy.base)
    result = dotnet_get_token(dotnet, "DefaultAzureCredential", env, VAULT)
    assert "error" not in result, result
    issued = assert_issued_to(
        str(result["token"]),
        tenant_id=fake_entra.info.tenant_id,
        audience=VAULT,
        client_id=fake_entra.info.client_id,
    )
    # The proxy counts the token's lifetime from when it asked Entra ID, 2.5 s before the
    # token was issued: the expiry it hands out is that much earlier, never later.
    assert issued["exp"] - 5 <= int(str(result["expires_on"])) <= issued["exp"]
    assert fake_entra.stats()["token_requests"]["total"] == 1
    assert len(token_lines(proxy)) >= 2


def test_transient_failure_is_retried_by_azure_identity(
    dotnet: DotnetClients, proxy: ProxyProcess, fake_entra: FakeEntra, tmp_path: Path
) -> None:
    """IMDS-COMPAT §6: a transient failure is a 5xx, never a 400 (which Azure.Identity would
    take as final): its retry gets the token."""
    fake_entra.behave(mode="fail", count=1)
    env = proxied_env(tmp_path, proxy.base)
    result = dotnet_get_token(dotnet, "ManagedIdentityCredential", env, ARM)
    assert_client_result(
        result,
        tenant_id=fake_entra.info.tenant_id,
        audience=ARM,
        client_id=fake_entra.info.client_id,
    )
    statuses = [int(str(line["status"])) for line in token_lines(proxy)]
    assert statuses[-1] == 200 and all(status >= 500 for status in statuses[:-1]), statuses
    assert len(statuses) >= 2


def test_the_report_names_the_dotnet_clients(
    dotnet: DotnetClients, proxy: ProxyProcess, tmp_path: Path
) -> None:
    """Azure.Identity and MSAL.NET as they really call, and a Rust-shaped caller, in the
    report the proxy serves and in `imds-proxy report`: each family with its version (MSAL.NET
    sends none before 4.84), its verdict and its own advice."""
    env = proxied_env(tmp_path, proxy.base)
    for client in ("ManagedIdentityCredential", "MSAL.NET-4.56", "MSAL.NET-4.83"):
        assert "token" in dotnet_get_token(dotnet, client, env, ARM)
    rust = {"Metadata": "true", "User-Agent": "azsdk-rust-identity/0.27.0 (1.85.0; linux; x86_64)"}
    assert requests.get(proxy.url(ARM), headers=rust, timeout=10).status_code == 200

    report = requests.get(f"http://127.0.0.1:{proxy.port}/report", timeout=10).json()
    seen = {(c["client"], c["version"]): c for c in report["callers"]}
    assert set(seen) == {
        ("azure-identity-dotnet", "1.10.3"),
        ("msal-dotnet", None),
        ("azure-identity-rust", "0.27.0"),
    }
    net = seen["azure-identity-dotnet", "1.10.3"]
    assert (net["supports_workload_identity"], net["advice_kind"]) == ("yes", "direct")
    assert net["advice"].endswith(
        "(WorkloadIdentityCredential or DefaultAzureCredential, since 1.9.0)"
    )
    msal = seen["msal-dotnet", None]
    assert (msal["supports_workload_identity"], msal["requests"]) == ("no", 2)
    assert msal["advice"].startswith(
        "replace library MSAL.NET (managed identity) with Azure.Identity ≥ 1.9.0"
    )
    assert seen["azure-identity-rust", "0.27.0"]["minimum_version"] == "0.22.0"
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "report", f"--proxy-port={proxy.port}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "Azure.Identity (.NET) [azure-identity-dotnet] 1.10.3: 1 requests" in done.stdout
    assert "MSAL.NET (managed identity) [msal-dotnet] version unknown: 2 requests" in done.stdout
    assert "azure_identity (Rust) [azure-identity-rust] 0.27.0: 1 requests" in done.stdout
    assert "; 1 of them cannot use workload identity yet" in done.stdout


def test_msal_dotnet_finds_imds_through_the_proxy(
    dotnet: DotnetClients, proxy: ProxyProcess, fake_entra: FakeEntra, tmp_path: Path
) -> None:
    """IMDS-COMPAT §6: MSAL.NET's source discovery probes the token path without `Metadata`
    (and without a resource) and takes IMDS only on a 400 that does not say `Identity not
    found`; the probe must not reach Entra ID."""
    argv = dotnet.argv("msal-4.83", "msal-source")
    result = run_client(argv, proxied_env(tmp_path, proxy.base), DOTNET_PROJECT)
    assert result == {
        "Source": "Imds",
        "ImdsV1FailureReason": None,
        "ImdsV2FailureReason": None,
        "sdk_version": "4.83.3",
    }
    assert fake_entra.stats()["token_requests"]["total"] == 0
    lines = token_lines(proxy)
    assert [(line["status"], line.get("error")) for line in lines] == [(400, "metadata_header")]
    assert lines[0]["client"] == "msal-dotnet"
