"""Registers the shared fixtures (tests/support/fixtures.py) and marks every test with its
tier."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ("tests.support.fixtures",)


# -- tiers -------------------------------------------------------------------------------
# Every test gets one tier marker from its module's name, so `make test-fast` (-m fast) runs
# the unit and in-process tests alone: tests/inprocess/ serves the proxy's server from the
# test process (tests/support/in_process.py) against one fake Entra ID process for the session. The
# slow tiers start real processes: the proxy, network namespaces, SDK clients in other
# languages, a Kubernetes cluster.

_PROCESS_MODULES = frozenset(
    (
        "test_demo",
        "test_deploy_observability",
        "test_devissuer",
        "test_doctor",
        "test_init_cli",
        "test_init_netns",
        "test_private_checkout",
        "test_webhook_process",
    )
)
_CLIENT_WORDS = ("clients", "dotnet", "azure_cli", "js_client", "legacy_sdks")


def tier_of(module: str, path: Path) -> str:
    """`cluster`, `clients`, `process` or `fast`, for a test module's name and path."""
    if "cluster" in path.parts:
        return "cluster"
    if any(word in module for word in _CLIENT_WORDS):
        return "clients"
    if module.startswith(("test_e2e_", "test_pod_")) or module in _PROCESS_MODULES:
        return "process"
    return "fast"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        item.add_marker(tier_of(path.stem, path))
