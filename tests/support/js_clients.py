"""The JavaScript SDKs of tests/js (npm packages installed once), run as node processes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from harness.proxy_process import ProxyProcess
from tests.support.sdk_clients import JS_PROJECT


def node_get_token(
    script: Path, proxy: ProxyProcess, resource: str, client_id: str | None = None
) -> dict[str, object]:
    env = {**os.environ, "AZURE_POD_IDENTITY_AUTHORITY_HOST": proxy.base}
    for name in (
        "AZURE_CLIENT_ID",
        "AZURE_TENANT_ID",
        "AZURE_FEDERATED_TOKEN_FILE",
        "IDENTITY_ENDPOINT",
        "MSI_ENDPOINT",
    ):
        env.pop(name, None)
    args = ["node", str(script), resource, *([client_id] if client_id else [])]
    done = subprocess.run(args, env=env, capture_output=True, timeout=60, cwd=JS_PROJECT)
    result: dict[str, object] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result
