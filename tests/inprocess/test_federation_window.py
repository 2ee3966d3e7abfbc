"""Federation failures that are final at once: 400 explained, inside the propagation window
and after it, from the fake Entra ID's real error answers, through the proxy's server in
process. Its clock and sleep are fake: the window and the retry delay pass when the test
says so. The propagating case (503, then 400) runs against the real process in real time:
tests/test_e2e_federation.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness.fake_entra import FakeEntra
from tests.support.clock import FakeClock
from tests.support.federation_cases import (
    FINAL_AT_ONCE,
    WINDOW,
    Setup,
    ask,
    entra_calls,
    log_lines,
)
from tests.support.in_process import running_in_process


@pytest.mark.parametrize(
    ("cause", "setup", "codes", "fix"), FINAL_AT_ONCE, ids=[c[0] for c in FINAL_AT_ONCE]
)
def test_other_causes_are_400_explained_inside_and_after_the_window(
    cause: str,
    setup: Setup,
    codes: tuple[str, ...],
    fix: str,
    fake_entra: FakeEntra,
    tmp_path: Path,
) -> None:
    env = setup(fake_entra, tmp_path)
    clock = FakeClock(time.time())
    args = [f"--propagation-window={WINDOW}"]
    with running_in_process(env, args=args, clock=clock, sleep=clock.sleep) as proxy:
        inside = ask(proxy)
        assert entra_calls(fake_entra) == 2, "retried once before it counts"
        clock.advance(WINDOW + 0.2)
        after = ask(proxy)
        assert entra_calls(fake_entra) == 2, "a rejection is remembered briefly"
        proxy.stop()
        lines = log_lines(proxy, "token exchange failed")
    for answer in (inside, after):
        assert answer.status_code == 400
        assert answer.json()["error"] == "invalid_request"
    text = inside.json()["error_description"]
    assert any(f"AADSTS{code}" in text for code in codes)
    assert fix in text and "Fix: " in text
    assert after.json()["error_description"] == text
    assert lines[-1]["cause"] == cause and lines[-1]["aadsts"] in codes
    assert "eyJ" not in proxy.log_text()
