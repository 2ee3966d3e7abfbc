"""Endpoint mode: unmodified SDKs get tokens from the real proxy with only the App Service
variables set: no redirect, no HTTP_PROXY, no AZURE_* in the app's environment.

The app's environment is what `imds-proxy inject --mode endpoint` gives a container:
`IDENTITY_ENDPOINT` + `IDENTITY_HEADER` (2019-08-01) and `MSI_ENDPOINT` + `MSI_SECRET`
(2017-09-01), all naming the proxy's `/msi/token` and one per-pod secret. Every request is
checked in the proxy's own request log: it reached `/msi/token`, never the IMDS path.

The SDKs run as processes against the proxy's server in this process; the secret read from
a file is checked against the real proxy process. The endpoint's refusals without SDKs are
checked in process: tests/inprocess/test_app_service.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import requests

from harness.fake_entra import FakeEntra
from harness.proxy_process import ProxyProcess, running_proxy
from tests.support.app_service import SECRET, app_env, assert_only_app_service, token_lines
from tests.support.fixtures import SECOND_CLIENT_ID
from tests.support.in_process import InProcessProxy, running_in_process
from tests.support.jwt_claims import claims
from tests.support.legacy_sdks import MSRESTAZURE
from tests.support.sdk_clients import JS_PROJECT

ARM = "https://management.azure.com"
VAULT = "https://vault.azure.net"

CURRENT_MANAGED_IDENTITY = """
import json, sys
from azure.identity import ManagedIdentityCredential
kwargs = {"client_id": sys.argv[2]} if len(sys.argv) > 2 else {}
token = ManagedIdentityCredential(**kwargs).get_token(sys.argv[1] + "/.default")
print(json.dumps({"token": token.token, "expires_on": token.expires_on}))
"""
CURRENT_DEFAULT = """
import json, sys
from azure.identity import DefaultAzureCredential
token = DefaultAzureCredential().get_token(sys.argv[1] + "/.default")
print(json.dumps({"token": token.token, "expires_on": token.expires_on}))
"""
AZURE_IDENTITY_1_5 = """
import json, sys
from azure.identity import ManagedIdentityCredential
kwargs = {"client_id": sys.argv[2]} if len(sys.argv) > 2 else {}
token = ManagedIdentityCredential(**kwargs).get_token(sys.argv[1] + "/.default")
print(json.dumps({"token": token.token, "expires_on": token.expires_on}))
"""


@pytest.fixture
def proxy(fake_entra: FakeEntra, tmp_path: Path) -> Iterator[InProcessProxy]:
    """The proxy's server (in this process: the SDKs are the processes here), given the pod's
    secret as the injector gives it (env IDENTITY_HEADER)."""
    env = {**fake_entra.env(), "IDENTITY_HEADER": SECRET}
    with running_in_process(env, tmp_path) as server:
        yield server


def run_python(
    program: str, env: Mapping[str, str], *args: str, folder: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    """The program in a fresh interpreter; with `folder`, only that folder's packages."""
    command = [sys.executable, *(["-S"] if folder else []), "-c", program, *args]
    env = {**env, **({"PYTHONPATH": str(folder)} if folder else {})}
    return subprocess.run(command, env=env, capture_output=True, timeout=60)


def token_of(done: subprocess.CompletedProcess[bytes]) -> dict[str, object]:
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    result: dict[str, object] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


def assert_issued(result: Mapping[str, object], resource: str, client_id: str) -> None:
    issued = claims(str(result["token"]))
    assert issued["aud"] == resource
    assert issued["appid"] == client_id


def test_current_azure_identity_uses_2019(proxy: InProcessProxy, fake_entra: FakeEntra) -> None:
    result = token_of(run_python(CURRENT_MANAGED_IDENTITY, app_env(proxy), ARM))
    assert_issued(result, ARM, fake_entra.info.client_id)
    issued = claims(str(result["token"]))
    assert abs(int(str(result["expires_on"])) - issued["exp"]) <= 2
    assert_only_app_service(proxy, "2019-08-01")


def test_current_azure_identity_user_assigned(proxy: InProcessProxy) -> None:
    result = token_of(run_python(CURRENT_MANAGED_IDENTITY, app_env(proxy), VAULT, SECOND_CLIENT_ID))
    assert_issued(result, VAULT, SECOND_CLIENT_ID)


def test_default_azure_credential(proxy: InProcessProxy, fake_entra: FakeEntra) -> None:
    result = token_of(run_python(CURRENT_DEFAULT, app_env(proxy), ARM))
    assert_issued(result, ARM, fake_entra.info.client_id)
    assert_only_app_service(proxy, "2019-08-01")


def test_azure_identity_1_5_uses_2017(
    old_sdks: dict[str, Path],
    proxy: InProcessProxy,
    fake_entra: FakeEntra,
) -> None:
    folder = old_sdks["azure-identity"]
    result = token_of(run_python(AZURE_IDENTITY_1_5, app_env(proxy), ARM, folder=folder))
    assert_issued(result, ARM, fake_entra.info.client_id)
    # It parses 2017's date string itself: the expiry must be the token's.
    assert abs(int(str(result["expires_on"])) - claims(str(result["token"]))["exp"]) <= 2
    user = run_python(AZURE_IDENTITY_1_5, app_env(proxy), VAULT, SECOND_CLIENT_ID, folder=folder)
    assert_issued(token_of(user), VAULT, SECOND_CLIENT_ID)
    assert_only_app_service(proxy, "2017-09-01")


def test_msrestazure_uses_2017(
    old_sdks: dict[str, Path],
    proxy: InProcessProxy,
    fake_entra: FakeEntra,
) -> None:
    """msrestazure takes the App Service path only where App Service's own
    APPSETTING_WEBSITE_SITE_NAME is set; otherwise it POSTs Cloud Shell's form, unsigned."""
    env = app_env(proxy, APPSETTING_WEBSITE_SITE_NAME="pod")
    done = run_python(MSRESTAZURE, env, VAULT + "/", folder=old_sdks["msrestazure"])
    result = token_of(done)
    assert result["token_type"] == "Bearer"
    assert_issued(result, VAULT + "/", fake_entra.info.client_id)
    assert str(result["expires_on"]).endswith(" +00:00")  # 2017's date, passed through
    assert_only_app_service(proxy, "2017-09-01")


def test_msrestazure_without_the_app_service_marker_is_refused_clearly(
    old_sdks: dict[str, Path],
    proxy: InProcessProxy,
) -> None:
    done = run_python(MSRESTAZURE, app_env(proxy), VAULT, folder=old_sdks["msrestazure"])
    assert done.returncode != 0
    assert b"405" in done.stderr
    proxy.stop()
    refused = [line for line in token_lines(proxy) if line["status"] == 405]
    assert refused and refused[0]["method"] == "POST"


def test_javascript_sdk_uses_2019(
    js_sdk: Path,
    proxy: InProcessProxy,
    fake_entra: FakeEntra,
) -> None:
    env = {**app_env(proxy), "HOME": os.environ.get("HOME", "/root")}
    done = subprocess.run(
        ["node", str(js_sdk), ARM], env=env, capture_output=True, timeout=60, cwd=JS_PROJECT
    )
    result: dict[str, object] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert "error" not in result, result
    assert_issued(result, ARM, fake_entra.info.client_id)
    expires = int(str(result["expiresOnTimestamp"])) / 1000
    assert abs(expires - claims(str(result["token"]))["exp"]) <= 2
    assert_only_app_service(proxy, "2019-08-01")


def test_an_sdk_with_the_wrong_secret_gets_no_token(proxy: InProcessProxy) -> None:
    done = run_python(CURRENT_MANAGED_IDENTITY, app_env(proxy, secret="not-the-pods-uid"), ARM)
    assert done.returncode != 0
    assert b"does not match" in done.stderr
    proxy.stop()
    assert [line["status"] for line in token_lines(proxy)] == [401]


def test_secret_from_a_file(fake_entra: FakeEntra, tmp_path: Path) -> None:
    secret_file = tmp_path / "identity-header"
    secret_file.write_text(SECRET + "\n")
    args = [f"--identity-header-file={secret_file}"]
    with running_proxy(fake_entra.env(), tmp_path, args) as proxy:
        result = token_of(run_python(CURRENT_MANAGED_IDENTITY, app_env(proxy), ARM))
        assert claims(str(result["token"]))["aud"] == ARM
    assert SECRET not in proxy.log_text()
    ready = [line for line in proxy.logs() if line["event"] == "App Service endpoint serves tokens"]
    assert [line["secret"] for line in ready] == ["--identity-header-file"]


def test_identity_selectors_resolve_as_on_the_imds_path(
    proxy: ProxyProcess, fake_entra: FakeEntra
) -> None:
    """2019-08-01's `principal_id`/`object_id` and `mi_res_id` select an identity as IMDS's
    `object_id` and `mi_res_id` do: by the ids its tokens carry, never the default's."""
    url = f"{proxy.base}/msi/token"
    headers = {"X-IDENTITY-HEADER": SECRET}

    def get(**selector: str) -> requests.Response:
        query = {"api-version": "2019-08-01", "resource": ARM, **selector}
        return requests.get(url, params=query, headers=headers, timeout=20)

    second_oid = fake_entra.object_id(SECOND_CLIENT_ID)
    unknown = get(principal_id=second_oid)
    assert unknown.status_code == 400
    assert set(unknown.json()) == {"statusCode", "message"}
    assert unknown.json()["message"].startswith("Identity not found")
    by_oid = get(object_id=fake_entra.object_id())
    assert by_oid.status_code == 200, by_oid.text
    assert by_oid.json()["client_id"] == fake_entra.info.client_id
    assert claims(by_oid.json()["access_token"])["oid"] == fake_entra.object_id()
    arm_spelling = fake_entra.resource_id().replace("/resourcegroups/", "/resourceGroups/")
    by_resource = get(mi_res_id=arm_spelling)
    assert by_resource.status_code == 200, by_resource.text
    assert by_resource.json()["access_token"] == by_oid.json()["access_token"]
    # A request by client id teaches the proxy that identity's ids; the selector that
    # was not found a moment ago now means it.
    assert get(client_id=SECOND_CLIENT_ID).status_code == 200
    learned = get(principal_id=second_oid)
    assert learned.status_code == 200, learned.text
    assert claims(learned.json()["access_token"])["appid"] == SECOND_CLIENT_ID
    by_client = fake_entra.stats()["token_requests"]["by_client_id"]
    assert by_client == {fake_entra.info.client_id: 1, SECOND_CLIENT_ID: 1}
    proxy.stop()
    lines = token_lines(proxy)
    assert [line["status"] for line in lines] == [400, 200, 200, 200, 200]
    assert {line["event"] for line in lines} == {"received app service token request"}
    assert lines[0]["error"] == "identity_unknown"
    assert lines[-1]["client_id"] == SECOND_CLIENT_ID
