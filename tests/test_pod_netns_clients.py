"""SDKs in every language reach 169.254.169.254 in a real pod network, unchanged (root only).

The pod of test_pod_netns_e2e.py (its fixture, reused as it is): the init program's redirect,
the real proxy as uid 1501, a fake Entra ID on the pod's loopback. Each client runs as the
app's uid with an app container's environment: no endpoint override, no proxy, nothing but
the metadata address it has compiled in. The token it returns must be the one the fake
Entra ID issued, and the expiry it computed the token's own.

One iptables backend is enough here (both are covered by test_pod_netns_e2e.py): these tests
are about the clients.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from harness.other_users import reachable
from tests.support.azure_cli import azure_cli_env, cloud_setup_commands, run_az, seed_config_dir
from tests.support.netns import BACKENDS, requires_root, wait_for_line
from tests.support.pod import APP_UID, Pod, as_app, assert_token, run_in_pod
from tests.support.sdk_clients import (
    JAVA_PROJECT,
    JS_PROJECT,
    azure_cli,
    go_client,
    java_classpath,
    node_modules,
    or_skip,
)

pytestmark = [requires_root, pytest.mark.parametrize("pod", BACKENDS[:1], indirect=True)]

ARM = "https://management.azure.com"
VAULT = "https://vault.azure.net"
ARM_STAND_IN_PORT = 8443
JAVA_CLIENTS = ["AzureIdentityToken", "MsalToken", "LegacyMsiToken"]


@pytest.mark.parametrize("main", JAVA_CLIENTS)
def test_java_client_in_the_pod(pod: Pod, app_home: Path, main: str) -> None:
    target = JAVA_PROJECT / "target"  # the build, where the app's uid can read it
    classpath = or_skip(java_classpath).replace(str(target), str(reachable(target)))
    argv = ["java", "-cp", classpath, f"imdsclients.{main}", ARM]
    assert_token(pod, run_in_pod(pod, argv, app_home), ARM)


@pytest.mark.parametrize("sdk", ["azidentity", "adal"])
def test_go_sdk_in_the_pod(pod: Pod, app_home: Path, sdk: str) -> None:
    argv = [str(reachable(or_skip(go_client))), "-sdk", sdk, "-resource", VAULT]
    assert_token(pod, run_in_pod(pod, argv, app_home), VAULT)


def test_javascript_sdk_in_the_pod(pod: Pod, app_home: Path) -> None:
    or_skip(node_modules)
    script = reachable(JS_PROJECT) / "get_token.mjs"
    result = run_in_pod(pod, ["node", str(script), ARM], app_home)
    result["expires_on"] = int(str(result.pop("expiresOnTimestamp"))) / 1000
    assert_token(pod, result, ARM)


def test_ms_rest_nodeauth_in_the_pod(pod: Pod, app_home: Path) -> None:
    or_skip(node_modules)
    script = reachable(JS_PROJECT) / "login_with_vm_msi.mjs"
    result = run_in_pod(pod, ["node", str(script), VAULT], app_home)
    result["expires_on"] = result["expiresOnMs"]  # seconds, read as milliseconds by the library
    assert_token(pod, result, VAULT)


def test_azure_cli_in_the_pod(pod: Pod, app_home: Path) -> None:
    az = or_skip(azure_cli)
    workdir = app_home / "arm"
    workdir.mkdir()
    arm = pod.net.pod.popen(
        [
            sys.executable,
            "-m",
            "tests.support.arm_stand_in",
            str(workdir),
            pod.entra.info.tenant_id,
            str(ARM_STAND_IN_PORT),
        ]
    )
    wait_for_line(arm, "ready")
    for path in [workdir, *workdir.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    config_dir = app_home / "azure-config"
    seed_config_dir(config_dir)
    shutil.chown(config_dir, APP_UID, APP_UID)
    for path in config_dir.iterdir():
        shutil.chown(path, APP_UID, APP_UID)
    env = azure_cli_env(app_home, config_dir, workdir / "arm-pki" / "ca.pem")
    commands = [
        *cloud_setup_commands(f"https://127.0.0.1:{ARM_STAND_IN_PORT}"),
        ["login", "--identity"],
        ["account", "get-access-token", "--resource", VAULT],
    ]
    for args in commands:
        got = run_az(az, args, env, prefix=as_app(pod))
    assert_token(pod, {"token": got["accessToken"], "expires_on": got["expires_on"]}, VAULT)
