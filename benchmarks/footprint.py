"""What a sidecar costs every pod besides its requests: start, idle wake-ups, memory growth.

- start: spawn to readiness, against a bare interpreter that imports aiohttp and binds a
  port (the floor for any aiohttp sidecar), polled the same way, in alternating turns;
- idle: context switches and CPU ticks of every thread of the process over an idle
  window, read from /proc (a timer that fires while idle shows as wake-ups);
- memory: RSS growth after many cached hits, and after many distinct resources that
  Entra ID rejects (each a remembered failure the proxy must keep bounded).
"""

from __future__ import annotations

import asyncio
import http.client
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import memory

POLL = 0.002
"""Seconds between readiness polls: fine enough for starts of a few hundred ms."""
START_LIMIT = 30.0


def _answers(port: int, path: str | None) -> bool:
    """With `path`: GET it answers 200; without: a TCP connection is accepted."""
    try:
        if path is None:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return True
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
        try:
            conn.request("GET", path)
            return conn.getresponse().status == 200
        finally:
            conn.close()
    except OSError:
        return False


def time_to_ready(
    command: list[str], env: dict[str, str] | None, port: int, path: str | None, cwd: Path
) -> float:
    """Seconds from spawning `command` until `port` answers (see `_answers`); then kill it."""
    started = time.monotonic()
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
    )
    try:
        while not _answers(port, path):
            if proc.poll() is not None:
                raise RuntimeError(f"{command[:4]} exited with {proc.returncode} before ready")
            if time.monotonic() - started > START_LIMIT:
                raise RuntimeError(f"{command[:4]} not ready after {START_LIMIT}s")
            time.sleep(POLL)
        return time.monotonic() - started
    finally:
        proc.kill()
        proc.wait(timeout=10)


def bare_listener_command(prefix: list[str], port: int) -> list[str]:
    """A process that imports aiohttp, binds `port` and waits: the start-up floor."""
    code = (
        "import aiohttp, socket, time\n"
        f"s = socket.create_server(('127.0.0.1', {port}))\n"
        "time.sleep(60)\n"
    )
    return [*prefix, sys.executable, "-c", code]


def thread_counters(pid: int) -> dict[str, int]:
    """Context switches (voluntary: the process slept and was woken) and CPU clock ticks,
    summed over every thread of `pid`."""
    voluntary = involuntary = ticks = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
            stat = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                voluntary += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                involuntary += int(line.split()[1])
        ticks += int(stat[11]) + int(stat[12])
    return {"voluntary": voluntary, "involuntary": involuntary, "ticks": ticks}


def idle(pid: int, seconds: float) -> dict[str, Any]:
    """Wake-ups (all context switches) and CPU ticks of `pid` over `seconds` of no traffic."""
    before = thread_counters(pid)
    time.sleep(seconds)
    after = thread_counters(pid)
    delta = {k: after[k] - before[k] for k in before}
    return {
        "seconds": seconds,
        "wakeups": delta["voluntary"] + delta["involuntary"],
        "cpu_ticks": delta["ticks"],
        "cpu_ms": 1000 * delta["ticks"] / os.sysconf("SC_CLK_TCK"),
        "threads": len(list(Path(f"/proc/{pid}/task").iterdir())),
        "rss_kib": memory.rss_kib(pid),
    }


async def _distinct(base_url: str, resources: list[str], concurrency: int) -> dict[str, int]:
    """GET a token for each resource, `concurrency` at a time; counts answers by status."""
    import aiohttp  # the benchmark's client, not the measured process

    statuses: dict[str, int] = {}
    queue = iter(resources)
    timeout = aiohttp.ClientTimeout(total=30)

    async def worker(session: aiohttp.ClientSession) -> None:
        for resource in queue:
            try:
                params = {"api-version": "2018-02-01", "resource": resource}
                async with session.get(
                    base_url, params=params, headers={"Metadata": "true"}
                ) as response:
                    await response.read()
                    status = str(response.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = f"error:{type(exc).__name__}"
            statuses[status] = statuses.get(status, 0) + 1

    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return statuses


def distinct_resources(base_url: str, resources: list[str], concurrency: int = 8) -> dict[str, int]:
    return asyncio.run(_distinct(base_url, resources, concurrency))
