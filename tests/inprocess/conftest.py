"""The in-process tier: the proxy's server in the test process (tests/support/in_process.py).

Here `proxy` is that server, against one fake Entra ID process for the whole session (each
test gets it reset), so a test costs its requests, not an interpreter's start. Tests that
need what only a process has (its start, signals, drain, flags end to end, stdout) stay in
the process tier, tests/test_e2e_*.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.fake_entra import FakeEntra
from harness.proxy_process import FakeImds
from tests.support.fixtures import two_client_issuer
from tests.support.in_process import InProcessProxy, running_in_process


@pytest.fixture(scope="session")
def fake_entra_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeEntra]:
    """One fake Entra ID process for every in-process module, knowing two client ids."""
    with two_client_issuer(tmp_path_factory.mktemp("fake-entra-in-process")) as entra:
        yield entra


@pytest.fixture
def proxy(fake_entra: FakeEntra, fake_imds: FakeImds, tmp_path: Path) -> Iterator[InProcessProxy]:
    """The proxy's server, configured as the webhook would, against the fake Entra ID."""
    with running_in_process(fake_entra.env(), tmp_path, imds_upstream=fake_imds.url) as server:
        yield server
