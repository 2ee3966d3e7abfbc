""".NET SDKs reach 169.254.169.254 in a real pod network, unchanged (root only).

The pod of test_pod_netns_e2e.py as test_pod_netns_clients.py uses it: the init program's
redirect, the real proxy as uid 1501, a fake Entra ID on the pod's loopback. Azure.Identity
(ManagedIdentityCredential, DefaultAzureCredential) and MSAL.NET (4.56, 4.83) run as the
app's uid with an app container's environment: nothing but the metadata address they have
compiled in. Their token must be the fake Entra ID's, their expiry the token's own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.dotnet_clients import DOTNET_SDKS, dotnet_clients
from tests.support.netns import BACKENDS, requires_root
from tests.support.pod import Pod, assert_token, run_in_pod
from tests.support.sdk_clients import or_skip

pytestmark = [requires_root, pytest.mark.parametrize("pod", BACKENDS[:1], indirect=True)]

ARM = "https://management.azure.com"
VAULT = "https://vault.azure.net"


@pytest.mark.parametrize("client", list(DOTNET_SDKS))
def test_dotnet_client_in_the_pod(pod: Pod, app_home: Path, client: str) -> None:
    dotnet = or_skip(dotnet_clients)  # under the test cache, which every uid can read
    app, sdk, version = DOTNET_SDKS[client]
    resource = VAULT if sdk == "msal" else ARM
    result = run_in_pod(pod, dotnet.argv(app, sdk, resource), app_home)
    assert result.get("sdk_version") == version, result
    assert_token(pod, result, resource)


def test_msal_dotnet_finds_imds_in_the_pod(pod: Pod, app_home: Path) -> None:
    """MSAL.NET 4.83's source discovery, through the redirect: its header-less probe of the
    token path gets the proxy's 400, so it takes IMDS (not v2, not "none")."""
    dotnet = or_skip(dotnet_clients)
    result = run_in_pod(pod, dotnet.argv("msal-4.83", "msal-source"), app_home)
    assert (result.get("Source"), result.get("ImdsV1FailureReason")) == ("Imds", None), result
