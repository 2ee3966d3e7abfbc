"""`make demo` works as the README says: it serves a token that curl can fetch."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness.proxy_process import ROOT

CURL = (
    "curl -s -H 'Metadata: true' 'http://127.0.0.1:8000/metadata/identity/oauth2/token"
    "?api-version=2018-02-01&resource=https://management.azure.com/'"
)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_make_demo_serves_a_token_to_curl(tmp_path: Path) -> None:
    log = tmp_path / "demo.log"
    with open(log, "wb") as out:
        demo = subprocess.Popen(
            ["make", "--no-print-directory", "demo"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "MAKEFLAGS": ""},
        )
    try:
        deadline = time.monotonic() + 60
        while CURL not in log.read_text(errors="replace"):
            assert demo.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, "make demo printed no curl command"
            time.sleep(0.2)
        # Exactly the command it printed.
        answer = subprocess.run(CURL, shell=True, capture_output=True, timeout=30, check=True)
        body = json.loads(answer.stdout)
        assert body["token_type"] == "Bearer"
        assert body["resource"] == "https://management.azure.com/"
        assert int(body["expires_in"]) > 3000
    finally:
        os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C at the terminal
        demo.wait(timeout=30)
    # make itself reports the interrupt; the proxy under it must have stopped cleanly.
    text = log.read_text(errors="replace")
    assert "stopped the proxy server" in text
    assert '"event_loop": "uvloop"' in text  # the demo runs on the loop the sidecar runs on
