"""Resident memory of a process, and of a process that only imports the proxy's libraries.

The import-only process is the floor for any Python sidecar built on these libraries,
imported as the proxy imports them (uvloop where installed, requests without its
character-set guesser): comparing the proxy's idle RSS with it shows what the proxy's own
state costs, apart from the interpreter and its dependencies.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from harness.processes import first_line

BASELINE_MODULES = (
    "aiohttp.web",
    "msal",
    "structlog",
    "prometheus_client",
    "requests",
    *(("uvloop",) if importlib.util.find_spec("uvloop") else ()),
)
START_TIMEOUT = 30.0
SLEEP_LIMIT = 120
"""The baseline process sleeps at most this long, should nobody stop it."""


def rss_kib(pid: int) -> int:
    """VmRSS of `pid` in KiB, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def import_baseline_kib(modules: tuple[str, ...] = BASELINE_MODULES) -> int:
    """RSS of a fresh interpreter once it has imported `modules` (and is idle)."""
    code = (
        "from proxy.tokens.lean import without_charset_guessing\n"
        "without_charset_guessing()\n"
        f"import {', '.join(modules)}, time\n"
        f"print('ready', flush=True)\n"
        f"time.sleep({SLEEP_LIMIT})\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        first_line(proc, START_TIMEOUT, "baseline process")
        return rss_kib(proc.pid)
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
