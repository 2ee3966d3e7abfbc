"""Resident memory of a process, and of a process that only imports the proxy's libraries.

The import-only process is the floor for any Python sidecar built on these libraries:
comparing the proxy's idle RSS with it shows what the proxy's own state costs, apart
from the interpreter and its dependencies.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

BASELINE_MODULES = ("aiohttp", "msal", "structlog", "prometheus_client", "requests")
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
        f"import {', '.join(modules)}, time; print('ready', flush=True); time.sleep({SLEEP_LIMIT})"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        _wait_for_line(proc, proc.stdout.fileno(), START_TIMEOUT)
        return rss_kib(proc.pid)
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def _wait_for_line(proc: subprocess.Popen[bytes], fd: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(f"baseline process not ready within {timeout:g}s")
        ready, _, _ = select.select([fd], [], [], min(remaining, 0.5))
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"baseline process exited with {proc.wait(timeout=5)}")
            buf += chunk
