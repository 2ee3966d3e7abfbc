"""Running the real Azure CLI (``az``) against the proxy, offline but for loopback.

Each configuration directory (AZURE_CONFIG_DIR) is the test's own: a cloud registered with
the ARM stand-in as its Resource Manager, telemetry and auto-upgrade off, and the version
check answered from a pre-seeded ``versionCheck.json`` (az otherwise fetches the latest
version from the internet when its cache is empty). HTTPS_PROXY is a closed loopback port,
so anything else az might try to reach over HTTPS fails at once instead of leaving the
machine; IMDS is plain HTTP and goes to HTTP_PROXY or the pod's redirect.
"""

from __future__ import annotations

import datetime
import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.sdk_clients import AZURE_CLI_VERSION, clean_env

CLOUD = "ImdsProxyTest"
CLOSED_PORT_PROXY = "http://127.0.0.1:9"


def azure_cli_env(home: Path, config_dir: Path, ca_bundle: Path, **extra: str) -> dict[str, str]:
    return clean_env(
        home,
        AZURE_CONFIG_DIR=str(config_dir),
        REQUESTS_CA_BUNDLE=str(ca_bundle),
        AZURE_CORE_COLLECT_TELEMETRY="false",
        AZURE_CORE_SURVEY_MESSAGE="false",
        AZURE_CORE_NO_COLOR="true",
        HTTPS_PROXY=CLOSED_PORT_PROXY,
        https_proxy=CLOSED_PORT_PROXY,
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        **extra,
    )


def seed_config_dir(config_dir: Path) -> None:
    """The version check's cache, fresh: az then asks nobody which version is the latest."""
    config_dir.mkdir(parents=True, exist_ok=True)
    here = {"local": AZURE_CLI_VERSION, "pypi": AZURE_CLI_VERSION}
    versions = {
        "versions": {"azure-cli": here, "core": here, "telemetry": here},
        "update_time": str(datetime.datetime.now()),
    }
    (config_dir / "versionCheck.json").write_text(json.dumps(versions))
    (config_dir / "config").write_text(
        "[auto-upgrade]\nenable = no\n[core]\ncollect_telemetry = no\n"
    )


def cloud_setup_commands(arm_url: str) -> list[list[str]]:
    """`az` arguments that make the ARM stand-in the active cloud's Resource Manager (az reads
    the other endpoints from it)."""
    return [
        [
            "cloud",
            "register",
            "--name",
            CLOUD,
            "--endpoint-resource-manager",
            arm_url,
        ],
        ["cloud", "set", "--name", CLOUD],
    ]


def run_az(
    az: Sequence[str],
    args: Sequence[str],
    env: Mapping[str, str],
    timeout: float = 120,
    prefix: Sequence[str] = (),
) -> Any:
    """One az command with JSON output (run under ``prefix``, e.g. a namespace and a uid);
    a failure shows az's own error."""
    done = subprocess.run(
        [*prefix, *az, *args, "--output", "json"],
        env=dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(
            f"az {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}"
        )
    return json.loads(done.stdout) if done.stdout.strip() else None
