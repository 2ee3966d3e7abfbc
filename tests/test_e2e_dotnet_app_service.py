"""Endpoint mode for the .NET SDKs: Azure.Identity and MSAL.NET, unmodified, with only the App
Service variables set (IDENTITY_ENDPOINT/IDENTITY_HEADER and MSI_*; no HTTP_PROXY, no
redirect). Both take IDENTITY_ENDPOINT before IMDS and ask with api-version 2019-08-01 and
the secret in `X-IDENTITY-HEADER`; the proxy must answer there and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.fake_entra import FakeEntra
from harness.proxy_process import ProxyProcess, running_proxy
from tests.support.app_service import SECRET, assert_only_app_service, endpoint_env
from tests.support.dotnet_clients import DOTNET_PROJECT, DOTNET_SDKS, DotnetClients
from tests.support.fixtures import SECOND_CLIENT_ID
from tests.support.jwt_claims import assert_client_result
from tests.support.sdk_clients import run_client

ARM = "https://management.azure.com"
VAULT = "https://vault.azure.net"


@pytest.fixture
def proxy(fake_entra: FakeEntra, tmp_path: Path) -> Iterator[ProxyProcess]:
    with running_proxy({**fake_entra.env(), "IDENTITY_HEADER": SECRET}, tmp_path) as process:
        yield process


@pytest.mark.parametrize("client", list(DOTNET_SDKS))
def test_dotnet_client_in_endpoint_mode(
    client: str,
    dotnet: DotnetClients,
    proxy: ProxyProcess,
    fake_entra: FakeEntra,
    tmp_path: Path,
) -> None:
    app, sdk, _ = DOTNET_SDKS[client]
    env = endpoint_env(proxy, tmp_path)
    system = run_client(dotnet.argv(app, sdk, ARM), env, DOTNET_PROJECT)
    assert_client_result(
        system,
        tenant_id=fake_entra.info.tenant_id,
        audience=ARM,
        client_id=fake_entra.info.client_id,
    )
    user = run_client(dotnet.argv(app, sdk, VAULT, SECOND_CLIENT_ID), env, DOTNET_PROJECT)
    assert_client_result(
        user, tenant_id=fake_entra.info.tenant_id, audience=VAULT, client_id=SECOND_CLIENT_ID
    )
    assert_only_app_service(proxy, "2019-08-01")
