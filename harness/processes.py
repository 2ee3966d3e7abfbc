"""Waiting for a child process to be ready, bounded in time: shared by the test fixtures
and the benchmarks, which start the same kinds of processes."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import time

import requests


class NotReady(RuntimeError):
    """The process exited, or did not become ready in time; the message says which."""


def first_line(proc: subprocess.Popen[bytes], timeout: float, what: str) -> str:
    """The first line the process writes to its stdout pipe."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise NotReady(f"{what} did not start within {timeout:g}s")
        ready, _, _ = select.select([fd], [], [], min(remaining, 0.5))
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise NotReady(f"{what} exited with {proc.wait(timeout=5)}")
            buf += chunk
    return buf.split(b"\n", 1)[0].decode()


def answering(proc: subprocess.Popen[bytes], url: str, timeout: float, what: str) -> None:
    """Return once `url` answers 200 (plain HTTP on loopback; no proxies from the env)."""
    deadline = time.monotonic() + timeout
    with requests.Session() as session:
        session.trust_env = False
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise NotReady(f"{what} exited with {proc.returncode}")
            with contextlib.suppress(requests.RequestException):
                if session.get(url, timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
    raise NotReady(f"{what} not answering {url} within {timeout:g}s")
