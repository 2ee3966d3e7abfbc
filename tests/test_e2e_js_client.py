"""The JavaScript SDKs get their tokens through the real proxy process.

@azure/identity differs from the Python SDKs where IMDS-COMPAT says so: it calls the path
with a trailing slash and reads `expires_on` (not `expires_in`), so it guards both.

The legacy @azure/ms-rest-nodeauth (`loginWithVmMSI`) sends its request straight to its
HTTP client, past the pipeline's proxy policy, so HTTP_PROXY cannot reach it; it is pointed
at the proxy with its own `msiEndpoint` option here, and runs with its defaults against the
real redirect in test_pod_netns_clients.py. It parses `expires_on` as milliseconds (a Date
in January 1970): harmless, since it asks again for every request it signs.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from harness.fake_entra import FakeEntra
from harness.proxy_process import ProxyProcess
from tests.support.fixtures import SECOND_CLIENT_ID
from tests.support.js_clients import node_get_token
from tests.support.jwt_claims import assert_issued_to, claims
from tests.support.sdk_clients import JS_PROJECT, clean_env, run_client

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="Node.js and npm are needed to run the JavaScript SDK",
)


def test_javascript_sdk_gets_the_issued_token(
    js_sdk: Path, proxy: ProxyProcess, fake_entra: FakeEntra
) -> None:
    result = node_get_token(js_sdk, proxy, "https://management.azure.com")
    assert "error" not in result, result
    token = str(result["token"])
    issued = claims(token)
    assert issued["aud"] == "https://management.azure.com"
    assert issued["appid"] == fake_entra.info.client_id
    # expires_on drives the SDK's expiry: it must be the token's, not "now".
    expires = int(str(result["expiresOnTimestamp"])) / 1000
    assert abs(expires - issued["exp"]) <= 2 and expires > time.time() + 3000


def test_javascript_sdk_user_assigned(js_sdk: Path, proxy: ProxyProcess) -> None:
    result = node_get_token(js_sdk, proxy, "https://vault.azure.net", SECOND_CLIENT_ID)
    assert "error" not in result, result
    assert claims(str(result["token"]))["appid"] == SECOND_CLIENT_ID


def test_javascript_sdk_sees_entra_rejection(
    js_sdk: Path, proxy: ProxyProcess, fake_entra: FakeEntra
) -> None:
    fake_entra.behave(unknown_resources=["https://nope.example"])
    result = node_get_token(js_sdk, proxy, "https://nope.example")
    assert "AADSTS500011" in str(result.get("error"))


def ms_rest_nodeauth_token(
    proxy: ProxyProcess, home: Path, resource: str, client_id: str = ""
) -> dict[str, object]:
    endpoint = proxy.base + "/metadata/identity/oauth2/token"
    argv = ["node", str(JS_PROJECT / "login_with_vm_msi.mjs"), resource, client_id, endpoint]
    return run_client(argv, clean_env(home), JS_PROJECT)


@pytest.mark.parametrize("user_assigned", [False, True])
def test_ms_rest_nodeauth_login_with_vm_msi(
    js_sdk: Path, proxy: ProxyProcess, fake_entra: FakeEntra, tmp_path: Path, user_assigned: bool
) -> None:
    asked = SECOND_CLIENT_ID if user_assigned else ""
    result = ms_rest_nodeauth_token(proxy, tmp_path, "https://management.azure.com/", asked)
    assert result.get("tokenType") == "Bearer", result
    issued = assert_issued_to(
        str(result["token"]),
        tenant_id=fake_entra.info.tenant_id,
        audience="https://management.azure.com/",
        client_id=asked or fake_entra.info.client_id,
    )
    # What the library computed: the epoch seconds (as a Date's milliseconds), and
    # expires_in counted from now. The proxy counts expires_on from when its exchange
    # returned, the fake Entra ID counts exp from when it issued: a second may lie between.
    assert abs(result["expiresOnMs"] - issued["exp"]) <= 1
    assert abs(time.time() + float(str(result["expiresIn"])) - issued["exp"]) <= 2
