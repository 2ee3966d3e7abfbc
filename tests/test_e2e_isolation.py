"""Identity isolation against the real process: no spelling of an identity request reaches
the real IMDS (which would answer with the node's own identity). The allowlist and dead
upstreams are checked in process (tests/inprocess/test_isolation.py), with this test too."""

from __future__ import annotations

from harness.proxy_process import FakeImds, ProxyProcess
from tests.support.identity_paths import (
    misjudged_spellings,
)

META = {"Metadata": "true"}


def test_no_spelling_of_an_identity_path_reaches_the_upstream(
    proxy: ProxyProcess, fake_imds: FakeImds
) -> None:
    """One proxy, every spelling: a token where it means the token path, else a JSON 4xx."""
    assert misjudged_spellings(proxy.port) == []
    assert fake_imds.requests == []
