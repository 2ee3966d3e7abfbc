"""Go SDKs, unmodified, get their tokens through the real proxy process.

Both hard-code the IMDS address and use Go's http.ProxyFromEnvironment, so HTTP_PROXY sends
them to the proxy on loopback (absolute-form requests, routed by path), in a clean
environment (no IDENTITY_ENDPOINT, MSI_ENDPOINT or AZURE_* that would select another source):

- azidentity ManagedIdentityCredential (MSAL for Go underneath, through azcore's pipeline);
- go-autorest adal's ServicePrincipalToken from managed identity, whose expiry is only what
  `expires_on` says (a missing or odd value means "expired" on every call).

One program (tests/clients/go, modules pinned by go.sum) serves both: ``-sdk azidentity|adal``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.fake_entra import FakeEntra
from harness.proxy_process import ProxyProcess
from tests.support.fixtures import SECOND_CLIENT_ID
from tests.support.jwt_claims import assert_client_result
from tests.support.sdk_clients import GO_PROJECT, go_client, or_skip, proxied_env, run_client

ARM = "https://management.azure.com"
STORAGE = "https://storage.azure.com"
SDKS = ["azidentity", "adal"]


@pytest.fixture(scope="session")
def go_program() -> Path:
    return or_skip(go_client)


def go_get_token(
    program: Path, sdk: str, proxy: ProxyProcess, home: Path, resource: str, client_id: str = ""
) -> dict[str, object]:
    argv = [str(program), "-sdk", sdk, "-resource", resource, "-client-id", client_id]
    return run_client(argv, proxied_env(home, proxy.base), GO_PROJECT)


@pytest.mark.parametrize("sdk", SDKS)
def test_go_sdk_system_assigned(
    sdk: str, go_program: Path, proxy: ProxyProcess, fake_entra: FakeEntra, tmp_path: Path
) -> None:
    result = go_get_token(go_program, sdk, proxy, tmp_path, ARM)
    assert_client_result(
        result,
        tenant_id=fake_entra.info.tenant_id,
        audience=ARM,
        client_id=fake_entra.info.client_id,
    )
    assert fake_entra.stats()["token_requests"]["total"] == 1


@pytest.mark.parametrize("sdk", SDKS)
def test_go_sdk_user_assigned(
    sdk: str, go_program: Path, proxy: ProxyProcess, fake_entra: FakeEntra, tmp_path: Path
) -> None:
    result = go_get_token(go_program, sdk, proxy, tmp_path, STORAGE, SECOND_CLIENT_ID)
    assert_client_result(
        result,
        tenant_id=fake_entra.info.tenant_id,
        audience=STORAGE,
        client_id=SECOND_CLIENT_ID,
    )
    assert fake_entra.stats()["token_requests"]["by_client_id"] == {SECOND_CLIENT_ID: 1}


@pytest.mark.parametrize("sdk", SDKS)
def test_go_sdk_sees_entra_rejection_as_final(
    sdk: str, go_program: Path, proxy: ProxyProcess, fake_entra: FakeEntra, tmp_path: Path
) -> None:
    """A 400 is final for both: the SDK reports Entra's reason at once, without retrying."""
    fake_entra.behave(unknown_resources=["https://nope.example"])
    result = go_get_token(go_program, sdk, proxy, tmp_path, "https://nope.example")
    assert "AADSTS500011" in str(result.get("error")), result
    assert fake_entra.stats()["token_requests"]["total"] == 1
