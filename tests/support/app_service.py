"""Endpoint mode as `imds-proxy inject --mode endpoint` sets it up: the pod's secret, the
app container's environment, and what the proxy's request log must show afterwards."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from harness.proxy_process import ProxyProcess
from tests.support.in_process import InProcessProxy
from tests.support.sdk_clients import clean_env

SECRET = str(uuid.uuid4())  # what the downward API gives: the pod's uid


def app_env(
    proxy: ProxyProcess | InProcessProxy, secret: str = SECRET, **extra: str
) -> dict[str, str]:
    """The app container's environment in endpoint mode, and nothing that reaches IMDS."""
    endpoint = proxy.base + "/msi/token"
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "IDENTITY_ENDPOINT": endpoint,
        "IDENTITY_HEADER": secret,
        "MSI_ENDPOINT": endpoint,
        "MSI_SECRET": secret,
        **extra,
    }


def endpoint_env(proxy: ProxyProcess, home: Path) -> dict[str, str]:
    return clean_env(home, **{k: v for k, v in app_env(proxy).items() if k != "PATH"})


def token_lines(proxy: ProxyProcess | InProcessProxy) -> list[dict[str, object]]:
    """The proxy's request lines for token requests of either protocol."""
    return [line for line in proxy.logs() if "token request" in str(line.get("event"))]


def assert_only_app_service(proxy: ProxyProcess | InProcessProxy, api_version: str) -> None:
    """Stops the proxy (its log is flushed on the way out), then reads its request lines."""
    proxy.stop()
    lines = token_lines(proxy)
    assert lines, "no token request reached the proxy"
    assert {line["event"] for line in lines} == {"received app service token request"}
    assert {line.get("api_version") for line in lines if line["status"] == 200} == {api_version}
    assert SECRET not in proxy.log_text()
