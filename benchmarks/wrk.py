"""Drive an HTTP server with `wrk` and read its report.

wrk is a C load generator: on its own core it can saturate a single-core Python server,
so the server, not the client, is what the figures describe. Its text report is the only
output it has without Lua scripting, so `parse` reads that text.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_PERCENTILE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.MULTILINE)
_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_NON_2XX = re.compile(r"^\s*Non-2xx or 3xx responses:\s+(\d+)", re.MULTILINE)
_SOCKET = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.MULTILINE
)
RUN_MARGIN = 30.0
"""Seconds a wrk run may take beyond its duration before it counts as hung."""


class WrkError(RuntimeError):
    """wrk is missing, failed, or printed a report that could not be read."""


@dataclass(frozen=True)
class WrkResult:
    """One wrk run. `non_2xx` is wrk's count of answers with status >= 400."""

    requests: int
    seconds: float
    requests_per_s: float
    percentiles_ms: dict[str, float]
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    raw: str = ""

    @property
    def failed(self) -> int:
        """Requests that did not get a success answer: error statuses plus socket errors."""
        return self.non_2xx + sum(self.socket_errors.values())

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "failed": self.failed}


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS_MS[unit]


def parse(text: str) -> WrkResult:
    """Read wrk's `--latency` report; raises `WrkError` when a figure is missing."""
    total = _TOTAL.search(text)
    rate = _RATE.search(text)
    percentiles = {_key(match[1]): _ms(match[2], match[3]) for match in _PERCENTILE.finditer(text)}
    if total is None or rate is None or "50" not in percentiles or "99" not in percentiles:
        raise WrkError(f"unreadable wrk report:\n{text}")
    non_2xx = _NON_2XX.search(text)
    sockets = _SOCKET.search(text)
    socket_errors = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, sockets.groups()), strict=True))
        if sockets
        else {}
    )
    return WrkResult(
        requests=int(total[1]),
        seconds=_ms(total[2], total[3]) / 1000,
        requests_per_s=float(rate[1]),
        percentiles_ms=percentiles,
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=socket_errors,
        raw=text,
    )


def _key(percent: str) -> str:
    """'50.000' and '50' name the same percentile."""
    return f"{float(percent):g}"


def version() -> str:
    """wrk's version line (it prints it with its usage, on `-v`)."""
    try:
        done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (done.stdout or done.stderr).split(" Copyright", 1)[0].strip() or "unknown"


def run(
    url: str,
    *,
    duration: float = 10.0,
    connections: int = 64,
    threads: int = 1,
    headers: Mapping[str, str] | None = None,
    prefix: Sequence[str] = (),
) -> WrkResult:
    """One wrk run against `url` (prefix e.g. `taskset -c 1`), bounded by a timeout."""
    if shutil.which("wrk") is None:
        raise WrkError("wrk is not installed: run `make system-deps` (Debian package wrk)")
    command = [
        *prefix,
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--latency",
        *(arg for name, value in (headers or {}).items() for arg in ("-H", f"{name}: {value}")),
        url,
    ]
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=duration + RUN_MARGIN,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise WrkError(f"wrk did not finish within {duration + RUN_MARGIN:g}s") from exc
    if done.returncode != 0:
        raise WrkError(f"wrk exited with {done.returncode}: {done.stderr.strip()}")
    return parse(done.stdout)
