"""Identity isolation against the real process: no spelling of an identity request reaches
the real IMDS (which would answer with the node's own identity). The allowlist and dead
upstreams are checked in process (tests/inprocess/test_isolation.py), with this test too."""

from __future__ import annotations

from tests.identity_paths import (
    QUERY,
    REFUSED_SPELLINGS,
    TOKEN_SPELLINGS,
    judged_by_proxy,
    raw_get,
)
from tests.proxy_process import FakeImds, ProxyProcess

META = {"Metadata": "true"}


def test_no_spelling_of_an_identity_path_reaches_the_upstream(
    proxy: ProxyProcess, fake_imds: FakeImds
) -> None:
    """One proxy, every spelling: a token where it means the token path, else a JSON 4xx."""
    assert len(TOKEN_SPELLINGS) + len(REFUSED_SPELLINGS) >= 30
    wrong = []
    for target, means_token in [(t, True) for t in TOKEN_SPELLINGS] + [
        (t, False) for t in REFUSED_SPELLINGS
    ]:
        status, headers, body = raw_get("127.0.0.1", proxy.port, target + QUERY, META)
        answer = judged_by_proxy(status, headers, body)
        if (status == 200) != means_token or status not in (200, 400, 404):
            wrong.append((target, status, answer.get("error")))
    assert wrong == []
    assert fake_imds.requests == []
