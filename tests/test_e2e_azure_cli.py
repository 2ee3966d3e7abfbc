"""The Azure CLI (current release, from the package index) logs in through the real proxy.

`az login --identity` asks IMDS for an ARM token through MSAL's managed-identity client,
reads `tid` from it, and lists the identity's subscriptions from Resource Manager (here a
loopback stand-in over TLS, tests/support/arm_stand_in.py); `az account get-access-token` then asks
IMDS for the resource's token. IMDS is reached through HTTP_PROXY (az's requests honour it);
nothing else leaves loopback (tests/support/azure_cli.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.fake_entra import FakeEntra
from harness.proxy_process import ProxyProcess
from tests.support.arm_stand_in import SUBSCRIPTION_ID, ArmStandIn
from tests.support.azure_cli import azure_cli_env, cloud_setup_commands, run_az, seed_config_dir
from tests.support.fixtures import SECOND_CLIENT_ID
from tests.support.jwt_claims import assert_issued_to

ARM_AUDIENCE = "https://management.core.windows.net/"
VAULT = "https://vault.azure.net"


@pytest.fixture
def az_env(az: list[str], arm: ArmStandIn, proxy: ProxyProcess, tmp_path: Path) -> dict[str, str]:
    """A fresh AZURE_CONFIG_DIR whose active cloud's Resource Manager is the stand-in."""
    config_dir = tmp_path / "azure-config"
    seed_config_dir(config_dir)
    env = azure_cli_env(
        tmp_path, config_dir, arm.ca_bundle, HTTP_PROXY=proxy.base, http_proxy=proxy.base
    )
    for command in cloud_setup_commands(arm.url):
        run_az(az, command, env)
    return env


@pytest.mark.parametrize("client_id", [None, SECOND_CLIENT_ID], ids=["system", "user"])
def test_az_login_identity_then_get_access_token(
    az: list[str],
    az_env: dict[str, str],
    arm: ArmStandIn,
    fake_entra: FakeEntra,
    client_id: str | None,
) -> None:
    expected_client = client_id or fake_entra.info.client_id
    tenant = fake_entra.info.tenant_id
    login = ["login", "--identity", *(["--client-id", client_id] if client_id else [])]
    accounts = run_az(az, login, az_env)
    assert [(a["id"], a["tenantId"]) for a in accounts] == [(SUBSCRIPTION_ID, tenant)]
    # The subscription listing carried the ARM token the proxy handed out.
    listing = arm.bearer_tokens("/subscriptions")
    assert listing, arm.seen
    assert_issued_to(
        listing[-1], tenant_id=tenant, audience=ARM_AUDIENCE, client_id=expected_client
    )

    got = run_az(az, ["account", "get-access-token", "--resource", VAULT], az_env)
    assert got["tokenType"] == "Bearer" and got["tenant"] == tenant
    assert_issued_to(
        got["accessToken"],
        tenant_id=tenant,
        audience=VAULT,
        client_id=expected_client,
        expires_on=float(got["expires_on"]),
    )
    assert fake_entra.stats()["token_requests"]["by_client_id"] == {expected_client: 2}
