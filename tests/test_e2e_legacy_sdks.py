"""SDKs still found in old images, unmodified, get tokens through the real proxy.

They hard-code the IMDS address, so they reach the proxy as their HTTP_PROXY (absolute-form
requests, routed by path; nothing leaves loopback). Each is installed from the package
index into its own folder, apart from the test environment's newer versions.

- azure-identity 1.5 first probes the bare token path with `Metadata: true` and no query,
  and caches a 200 to that probe as the token: the proxy must answer it with an error;
- msrestazure's MSIAuthentication reads `token_type`, `access_token` and `expires_on`.
"""

from __future__ import annotations

from pathlib import Path

from harness.fake_entra import FakeEntra
from harness.proxy_process import ProxyProcess
from tests.support.jwt_claims import claims
from tests.support.legacy_sdks import AZURE_IDENTITY_1_5, MSRESTAZURE, run_old


def test_azure_identity_1_5_survives_its_probe(
    old_sdks: dict[str, Path], proxy: ProxyProcess, fake_entra: FakeEntra
) -> None:
    result = run_old(
        old_sdks["azure-identity"], AZURE_IDENTITY_1_5, proxy, "https://management.azure.com"
    )
    issued = claims(str(result["token"]))
    assert issued["aud"] == "https://management.azure.com"
    assert issued["appid"] == fake_entra.info.client_id
    proxy.stop()
    lines = [line for line in proxy.logs() if line["event"] == "received token request"]
    assert lines[0]["status"] == 400, "the bare probe must not get a 200"
    assert lines[-1]["status"] == 200


def test_msrestazure_msi_authentication(
    old_sdks: dict[str, Path], proxy: ProxyProcess, fake_entra: FakeEntra
) -> None:
    result = run_old(old_sdks["msrestazure"], MSRESTAZURE, proxy, "https://vault.azure.net/")
    assert result["token_type"] == "Bearer"
    issued = claims(str(result["token"]))
    assert issued["aud"] == "https://vault.azure.net/"
    assert abs(int(str(result["expires_on"])) - issued["exp"]) <= 2
