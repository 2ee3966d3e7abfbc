"""The real process's runtime: its event loop, and what it keeps out of memory.

uvloop is installed with the proxy and chosen by `--event-loop auto`; the proxy must run
the same without it. "Without it" is a real interpreter where `import uvloop` fails: a
module of that name on PYTHONPATH that raises ImportError, as on a platform with no wheel.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import requests

from harness.fake_entra import FakeEntra
from harness.proxy_process import ROOT, ProxyProcess, running_proxy
from tests.support.metrics_text import sample

ARM = "https://management.azure.com/"
META = {"Metadata": "true"}


def without_uvloop(env: dict[str, str], directory: Path) -> dict[str, str]:
    """`env` for an interpreter on which `import uvloop` fails."""
    directory.mkdir(exist_ok=True)
    (directory / "uvloop.py").write_text('raise ImportError("uvloop is not installed here")\n')
    return {**env, "PYTHONPATH": str(directory)}


def loop_in_use(proxy: ProxyProcess) -> tuple[str, str]:
    """The loop named by the start-up line and by the build-info metric, after a token."""
    answer = requests.get(proxy.url(ARM), headers=META, timeout=10)
    assert answer.status_code == 200, answer.text
    started = [line for line in proxy.logs() if line.get("event") == "starting the proxy server"]
    metrics = proxy.metrics()
    by_metric = [
        name
        for name in ("uvloop", "asyncio")
        if sample(metrics, "imds_proxy_build_info", event_loop=name) == 1
    ]
    assert len(started) == 1 and len(by_metric) == 1, (started, by_metric)
    return started[0]["event_loop"], by_metric[0]


def test_auto_runs_on_uvloop_when_it_is_installed(fake_entra: FakeEntra, tmp_path: Path) -> None:
    with running_proxy(fake_entra.env(), tmp_path) as proxy:
        assert loop_in_use(proxy) == ("uvloop", "uvloop")


def test_asyncio_loop_when_asked_for(fake_entra: FakeEntra, tmp_path: Path) -> None:
    with running_proxy(fake_entra.env(), tmp_path, ["--event-loop", "asyncio"]) as proxy:
        assert loop_in_use(proxy) == ("asyncio", "asyncio")


def test_auto_falls_back_to_asyncio_without_uvloop(fake_entra: FakeEntra, tmp_path: Path) -> None:
    env = without_uvloop(fake_entra.env(), tmp_path / "no-uvloop")
    with running_proxy(env, tmp_path) as proxy:
        assert loop_in_use(proxy) == ("asyncio", "asyncio")


def test_uvloop_asked_for_but_missing_is_a_configuration_error(
    fake_entra: FakeEntra, tmp_path: Path
) -> None:
    env = without_uvloop(fake_entra.env(), tmp_path / "no-uvloop")
    proxy = ProxyProcess(env, tmp_path, ["--event-loop", "uvloop"])
    result = subprocess.run(proxy.command, env=proxy.env, capture_output=True, timeout=30)
    assert result.returncode == 2, result
    assert b"--event-loop uvloop: uvloop is not installed" in result.stderr
    assert b"Traceback" not in result.stderr


def test_no_character_set_guesser_is_loaded(fake_entra: FakeEntra, tmp_path: Path) -> None:
    """requests' charset_normalizer (about 2.6 MiB) stays out of the process: Entra's JSON
    is read as UTF-8 without it, as the token shows."""
    with running_proxy(fake_entra.env(), tmp_path) as proxy:
        answer = requests.get(proxy.url(ARM), headers=META, timeout=10)
        assert answer.status_code == 200 and answer.json()["token_type"] == "Bearer"
        assert proxy.proc is not None
        mapped = Path(f"/proc/{proxy.proc.pid}/maps").read_text()
        assert "site-packages/aiohttp" in mapped  # the check can see compiled modules at all
        assert "charset_normalizer" not in mapped and "chardet" not in mapped
        assert "RequestsDependencyWarning" not in proxy.log_text()


def test_requests_without_a_guesser_still_decodes_json_and_text() -> None:
    """In a fresh interpreter where warnings are errors: no warning, and bodies without a
    charset decode as UTF-8."""
    code = (
        "from proxy.tokens.lean import without_charset_guessing\n"
        "without_charset_guessing()\n"
        "import requests, requests.compat\n"
        "assert requests.compat.chardet is None\n"
        "r = requests.models.Response()\n"
        'r._content = \'{"a": "\u00e9"}\'.encode()\n'
        "r.headers['Content-Type'] = 'application/json'\n"
        "assert r.json() == {'a': '\u00e9'}, r.json()\n"
        "del r.headers['Content-Type']\n"  # no charset named: the guesser's case
        'assert r.text == \'{"a": "\u00e9"}\', r.text\n'
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr.decode()
