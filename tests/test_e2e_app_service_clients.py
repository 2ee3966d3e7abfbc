"""Endpoint mode for the Go and Java SDKs: the clients of tests/clients, unmodified, with only
the App Service variables set (no HTTP_PROXY, no JVM proxy flags, no redirect).

- Go: azidentity (IDENTITY_ENDPOINT wins: 2019-08-01, through MSAL for Go) and go-autorest
  adal (MSI_ENDPOINT only: 2017-09-01, whose date `expires_on` it turns into the expiry);
- Java: com.azure:azure-identity and msal4j (IDENTITY_ENDPOINT: 2019-08-01). The legacy
  MSICredentials reads no such variable (its App Service class is another one), so it still
  needs the redirect and is not run here;
- the Azure CLI's `az login --identity` (MSAL for Python's managed-identity client: 2019-08-01).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.fake_entra import FakeEntra
from harness.proxy_process import ProxyProcess, running_proxy
from tests.support.app_service import SECRET, app_env, assert_only_app_service, endpoint_env
from tests.support.arm_stand_in import ArmStandIn
from tests.support.azure_cli import azure_cli_env, cloud_setup_commands, run_az, seed_config_dir
from tests.support.fixtures import SECOND_CLIENT_ID
from tests.support.jwt_claims import assert_client_result, assert_issued_to
from tests.support.sdk_clients import (
    GO_PROJECT,
    JAVA_PROJECT,
    go_client,
    java_classpath,
    or_skip,
    run_client,
)

ARM = "https://management.azure.com"
VAULT = "https://vault.azure.net"
GO_SDKS = {"azidentity": "2019-08-01", "adal": "2017-09-01"}
JAVA_CLIENTS = {
    "imdsclients.AzureIdentityToken": "2019-08-01",
    "imdsclients.MsalToken": "2019-08-01",
}


@pytest.fixture
def proxy(fake_entra: FakeEntra, tmp_path: Path) -> Iterator[ProxyProcess]:
    with running_proxy({**fake_entra.env(), "IDENTITY_HEADER": SECRET}, tmp_path) as process:
        yield process


@pytest.fixture(scope="session")
def go_program() -> Path:
    return or_skip(go_client)


@pytest.fixture(scope="session")
def classpath() -> str:
    return or_skip(java_classpath)


def check(result: dict[str, object], fake_entra: FakeEntra, audience: str, client_id: str) -> None:
    assert_client_result(
        result,
        tenant_id=fake_entra.info.tenant_id,
        audience=audience,
        client_id=client_id,
    )


@pytest.mark.parametrize("sdk", list(GO_SDKS))
def test_go_sdk_in_endpoint_mode(
    sdk: str, go_program: Path, proxy: ProxyProcess, fake_entra: FakeEntra, tmp_path: Path
) -> None:
    env = endpoint_env(proxy, tmp_path)
    base = [str(go_program), "-sdk", sdk]
    check(
        run_client([*base, "-resource", ARM], env, GO_PROJECT),
        fake_entra,
        ARM,
        fake_entra.info.client_id,
    )
    user = [*base, "-resource", VAULT, "-client-id", SECOND_CLIENT_ID]
    check(run_client(user, env, GO_PROJECT), fake_entra, VAULT, SECOND_CLIENT_ID)
    assert_only_app_service(proxy, GO_SDKS[sdk])


@pytest.mark.parametrize("main", list(JAVA_CLIENTS))
def test_java_client_in_endpoint_mode(
    main: str, classpath: str, proxy: ProxyProcess, fake_entra: FakeEntra, tmp_path: Path
) -> None:
    env = endpoint_env(proxy, tmp_path)
    base = ["java", "-cp", classpath, main]
    check(run_client([*base, ARM], env, JAVA_PROJECT), fake_entra, ARM, fake_entra.info.client_id)
    user = [*base, VAULT, SECOND_CLIENT_ID]
    check(run_client(user, env, JAVA_PROJECT), fake_entra, VAULT, SECOND_CLIENT_ID)
    assert_only_app_service(proxy, JAVA_CLIENTS[main])


def test_azure_cli_login_identity_in_endpoint_mode(
    az: list[str], arm: ArmStandIn, proxy: ProxyProcess, fake_entra: FakeEntra, tmp_path: Path
) -> None:
    """`az login --identity` goes through MSAL's managed-identity client, which takes
    IDENTITY_ENDPOINT before IMDS; az's HTTP_PROXY stays the closed port of tests/azure_cli."""
    config_dir = tmp_path / "azure-config"
    seed_config_dir(config_dir)
    variables = {k: v for k, v in app_env(proxy).items() if k != "PATH"}
    env = azure_cli_env(tmp_path, config_dir, arm.ca_bundle, **variables)
    for command in cloud_setup_commands(arm.url):
        run_az(az, command, env)
    tenant = fake_entra.info.tenant_id
    accounts = run_az(az, ["login", "--identity"], env)
    assert [a["tenantId"] for a in accounts] == [tenant]
    got = run_az(az, ["account", "get-access-token", "--resource", VAULT], env)
    assert_issued_to(
        got["accessToken"],
        tenant_id=tenant,
        audience=VAULT,
        client_id=fake_entra.info.client_id,
        expires_on=float(got["expires_on"]),
    )
    assert_only_app_service(proxy, "2019-08-01")
