"""The fixtures every tier shares, registered by tests/conftest.py (`pytest_plugins`).

A fake Entra ID process per module (`fake_entra_process`, reset for each test as
`fake_entra`), the real proxy process against it (`proxy`), a stand-in for the node's IMDS,
the SDK clients built or installed once (`az`, `js_sdk`, `old_sdks`, `dotnet`), and the
network-namespace pod (`pod`, one per module and iptables backend).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.fake_entra import FakeEntra
from harness.proxy_process import FakeImds, ProxyProcess, running_proxy
from tests.support import pod as pods
from tests.support.arm_stand_in import ArmStandIn
from tests.support.dotnet_clients import DotnetClients, dotnet_clients
from tests.support.legacy_sdks import install_old_sdks
from tests.support.netns import BACKENDS
from tests.support.sdk_clients import JS_PROJECT, azure_cli, node_modules, or_skip

SECOND_CLIENT_ID = "0b8f3c1e-6a2d-4d7e-9f10-3c4b5a6d7e8f"
"""A second app registration trusting the same service account (user-assigned tests)."""


def two_client_issuer(workdir: Path) -> FakeEntra:
    """The fake Entra ID the shared fixtures run: it knows the main and the second client."""
    return FakeEntra(workdir, extra_args=["--extra-client-id", SECOND_CLIENT_ID])


@pytest.fixture(scope="module")
def fake_entra_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeEntra]:
    """One fake Entra ID process per test module, knowing two client ids."""
    with two_client_issuer(tmp_path_factory.mktemp("fake-entra")) as entra:
        yield entra


@pytest.fixture
def fake_entra(fake_entra_process: FakeEntra) -> FakeEntra:
    """The module's fake Entra ID, reset to defaults for this test: default behaviour,
    zeroed counters and the original federated credentials."""
    fake_entra_process.reset()
    return fake_entra_process


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
    """The Azure CLI, installed once per machine (tests/support/sdk_clients.py)."""
    return or_skip(azure_cli)


@pytest.fixture
def arm(fake_entra: FakeEntra, tmp_path: Path) -> Iterator[ArmStandIn]:
    """A Resource Manager stand-in over TLS, for az's subscription listing."""
    with ArmStandIn(tmp_path, fake_entra.info.tenant_id) as stand_in:
        yield stand_in


@pytest.fixture(scope="session")
def js_sdk() -> Path:
    """tests/js's packages installed once (npm registry) into tests/js/node_modules."""
    or_skip(node_modules)
    return JS_PROJECT / "get_token.mjs"


@pytest.fixture(scope="session")
def old_sdks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """azure-identity 1.5 and msrestazure, each in its own folder, once per session."""
    return install_old_sdks(tmp_path_factory.mktemp)


@pytest.fixture(scope="session")
def dotnet() -> DotnetClients:
    return or_skip(dotnet_clients)


@pytest.fixture(scope="module", params=BACKENDS)
def pod(request: pytest.FixtureRequest) -> Iterator[pods.Pod]:
    """The network-namespace pod with one iptables backend (root only)."""
    with pods.running_pod(request.param) as running:
        yield running


@pytest.fixture
def app_home() -> Iterator[Path]:
    """A HOME the app's uid owns (az writes its configuration there)."""
    with pods.app_home() as home:
        yield home
