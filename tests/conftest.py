"""Shared fixtures: the fake Entra ID process and the real proxy process against it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.arm_stand_in import ArmStandIn
from tests.fake_entra import FakeEntra, fake_entra_fixture  # noqa: F401
from tests.proxy_process import FakeImds, ProxyProcess, running_proxy
from tests.sdk_clients import azure_cli, or_skip

SECOND_CLIENT_ID = "0b8f3c1e-6a2d-4d7e-9f10-3c4b5a6d7e8f"
"""A second app registration trusting the same service account (user-assigned tests)."""


@pytest.fixture(scope="module")
def fake_entra_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeEntra]:
    """One fake Entra ID process per test module, knowing two client ids."""
    workdir = tmp_path_factory.mktemp("fake-entra")
    with FakeEntra(workdir, extra_args=["--extra-client-id", SECOND_CLIENT_ID]) as entra:
        yield entra


@pytest.fixture
def fake_imds() -> Iterator[FakeImds]:
    with FakeImds() as imds:
        yield imds


@pytest.fixture
def proxy(fake_entra: FakeEntra, fake_imds: FakeImds, tmp_path: Path) -> Iterator[ProxyProcess]:
    """The real proxy process, configured as the webhook would, against the fake Entra ID."""
    with running_proxy(fake_entra.env(), tmp_path, imds_upstream=fake_imds.url) as process:
        yield process


@pytest.fixture(scope="session")
def az() -> list[str]:
    """The Azure CLI, installed once per machine (tests/sdk_clients.py)."""
    return or_skip(azure_cli)


@pytest.fixture
def arm(fake_entra: FakeEntra, tmp_path: Path) -> Iterator[ArmStandIn]:
    """A Resource Manager stand-in over TLS, for az's subscription listing."""
    with ArmStandIn(tmp_path, fake_entra.info.tenant_id) as stand_in:
        yield stand_in


# -- tiers -------------------------------------------------------------------------------
# Every test gets one tier marker from its module's name, so `make test-fast` (-m fast) runs
# the unit and in-process tests alone: tests/inprocess/ serves the proxy's server from the
# test process (tests/in_process.py) against one fake Entra ID process for the session. The
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
