"""SDKs still found in old images, unmodified, get tokens through the real proxy.

They hard-code the IMDS address, so they reach the proxy as their HTTP_PROXY (absolute-form
requests, routed by path; nothing leaves loopback). Each is installed from the package
index into its own folder, apart from the test environment's newer versions.

- azure-identity 1.5 first probes the bare token path with `Metadata: true` and no query,
  and caches a 200 to that probe as the token: the proxy must answer it with an error;
- msrestazure's MSIAuthentication reads `token_type`, `access_token` and `expires_on`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fake_entra import FakeEntra
from tests.jwt_claims import claims
from tests.proxy_process import ProxyProcess

AZURE_IDENTITY_1_5 = """
import json, sys
from azure.identity import ManagedIdentityCredential
token = ManagedIdentityCredential().get_token(sys.argv[1] + "/.default")
print(json.dumps({"token": token.token, "expires_on": token.expires_on}))
"""
MSRESTAZURE = """
import json, sys
from msrestazure.azure_active_directory import MSIAuthentication
credentials = MSIAuthentication(resource=sys.argv[1])
print(json.dumps({"token": credentials.token["access_token"],
                  "token_type": credentials.token["token_type"],
                  "expires_on": credentials.token["expires_on"]}))
"""


@pytest.fixture(scope="module")
def old_sdks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each legacy SDK in its own folder, as `pip install --target` lays it out."""
    folders = {}
    for name, requirement in (
        ("azure-identity", "azure-identity==1.5.0"),
        ("msrestazure", "msrestazure==0.6.4"),
    ):
        target = tmp_path_factory.mktemp(name)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "--target",
                str(target),
                requirement,
            ],
            check=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
        folders[name] = target
    return folders


def run_old(folder: Path, program: str, proxy: ProxyProcess, resource: str) -> dict[str, object]:
    """The program with only `folder` on its path, its HTTP traffic sent to the proxy."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HTTP_PROXY": proxy.base,
        "http_proxy": proxy.base,
        "NO_PROXY": "",
        "PYTHONPATH": str(folder),
    }
    done = subprocess.run(
        [sys.executable, "-S", "-c", program, resource], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    result: dict[str, object] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


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
