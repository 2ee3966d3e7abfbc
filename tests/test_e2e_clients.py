"""Real client SDKs fetch tokens through the real proxy process from the fake Entra ID.

Each client is pointed at the proxy the supported way (AZURE_POD_IDENTITY_AUTHORITY_HOST),
then the token it returns is decoded: it must be the one the fake issued for that
audience and client, which proves the whole chain (client → proxy → MSAL → TLS → Entra).
"""

from __future__ import annotations

import asyncio

import msal
import pytest
import requests
from azure.identity import ManagedIdentityCredential
from azure.identity.aio import ManagedIdentityCredential as AsyncManagedIdentityCredential

from harness.fake_entra import FakeEntra
from harness.proxy_process import ProxyProcess
from tests.support.jwt_claims import claims

ARM = "https://management.azure.com"
VAULT = "https://vault.azure.net"


@pytest.fixture
def pointed_at(proxy: ProxyProcess, monkeypatch: pytest.MonkeyPatch) -> ProxyProcess:
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", proxy.base)
    for name in (
        "MSI_ENDPOINT",
        "IDENTITY_ENDPOINT",
        "IDENTITY_HEADER",
        "AZURE_CLIENT_ID",
        "AZURE_FEDERATED_TOKEN_FILE",
        "AZURE_TENANT_ID",
    ):
        monkeypatch.delenv(name, raising=False)
    return proxy


def assert_issued(token: str, entra: FakeEntra, audience: str, client_id: str) -> None:
    got = claims(token)
    assert got["aud"] == audience
    assert got["appid"] == client_id
    assert got["tid"] == entra.info.tenant_id


def test_azure_identity_sync_gets_the_issued_token(
    pointed_at: ProxyProcess, fake_entra: FakeEntra
) -> None:
    credential = ManagedIdentityCredential()
    token = credential.get_token(ARM + "/.default")
    assert_issued(token.token, fake_entra, ARM, fake_entra.info.client_id)
    assert fake_entra.stats()["token_requests"]["total"] == 1


def test_azure_identity_user_assigned_selects_the_client(
    pointed_at: ProxyProcess, fake_entra: FakeEntra
) -> None:
    other = fake_entra.info.extra_client_ids[0]
    token = ManagedIdentityCredential(client_id=other).get_token(VAULT + "/.default")
    assert_issued(token.token, fake_entra, VAULT, other)


async def test_azure_identity_aio_gets_the_issued_token(
    pointed_at: ProxyProcess, fake_entra: FakeEntra
) -> None:
    async with AsyncManagedIdentityCredential() as credential:
        token = await credential.get_token(VAULT + "/.default")
    assert_issued(token.token, fake_entra, VAULT, fake_entra.info.client_id)
    assert token.expires_on > 0


@pytest.mark.parametrize("identity", ["system", "user"])
def test_msal_managed_identity_client(
    pointed_at: ProxyProcess, fake_entra: FakeEntra, identity: str
) -> None:
    client_id = fake_entra.info.extra_client_ids[0]
    managed: msal.SystemAssignedManagedIdentity | msal.UserAssignedManagedIdentity = (
        msal.SystemAssignedManagedIdentity()
        if identity == "system"
        else msal.UserAssignedManagedIdentity(client_id=client_id)
    )
    client = msal.ManagedIdentityClient(managed, http_client=requests.Session())
    result = client.acquire_token_for_client(resource=ARM)
    assert "access_token" in result, result
    expected = fake_entra.info.client_id if identity == "system" else client_id
    assert_issued(result["access_token"], fake_entra, ARM, expected)


def test_clients_share_one_exchange_per_resource(
    pointed_at: ProxyProcess, fake_entra: FakeEntra
) -> None:
    """Different SDKs asking for one resource cost Entra ID one call, not one each."""
    first = ManagedIdentityCredential().get_token(ARM + "/.default")
    client = msal.ManagedIdentityClient(
        msal.SystemAssignedManagedIdentity(), http_client=requests.Session()
    )
    second = client.acquire_token_for_client(resource=ARM)
    assert second["access_token"] == first.token
    assert fake_entra.stats()["token_requests"]["total"] == 1


def test_async_clients_in_parallel(pointed_at: ProxyProcess, fake_entra: FakeEntra) -> None:
    async def fetch_many() -> set[str]:
        async with AsyncManagedIdentityCredential() as credential:
            tokens = await asyncio.gather(
                *(credential.get_token(ARM + "/.default") for _ in range(20))
            )
        return {t.token for t in tokens}

    assert len(asyncio.run(fetch_many())) == 1
    assert fake_entra.stats()["token_requests"]["total"] == 1
