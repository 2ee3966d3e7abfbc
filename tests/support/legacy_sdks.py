"""SDKs still found in old images, each installed from the package index into its own
folder (apart from the test environment's newer versions), and run with only that folder
on their path and their HTTP traffic sent to the proxy."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from harness.proxy_process import ProxyProcess

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


def install_old_sdks(folder_for: Callable[[str], Path]) -> dict[str, Path]:
    """Each legacy SDK in its own folder, as `pip install --target` lays it out."""
    folders = {}
    for name, requirement in (
        ("azure-identity", "azure-identity==1.5.0"),
        ("msrestazure", "msrestazure==0.6.4"),
    ):
        target = folder_for(name)
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
