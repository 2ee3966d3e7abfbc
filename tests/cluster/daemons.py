"""The cluster's long-running processes, each with a pidfile and a log file.

A pidfile records the pid with the process's start time and executable, so that the next run
can stop what a killed run left behind without ever signalling a recycled pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.cluster.steps import BringUpError, tail


def start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def alive(pid: int) -> bool:
    """True while the pid exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def reap(pid: int) -> None:
    """Collect the exit status of a child of ours (a component, or an adopted shim)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def wait_gone(pids: Sequence[int], timeout: float) -> list[int]:
    """Wait until the pids are gone (and reaped, where they are ours); return those left."""
    deadline = time.monotonic() + timeout
    for p in pids:
        reap(p)
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        for p in left:
            reap(p)
        left = [p for p in left if alive(p)]
    for p in pids:  # those that became zombies between two looks
        reap(p)
    return left


def reap_adopted_shims() -> None:
    """Reap the exited containerd shims this process adopted (see `adopt_orphans`): those of
    pods deleted during the run as well as those the teardown stopped."""
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm, rest = stat[stat.find("(") + 1 : stat.rfind(")")], stat.rsplit(")", 1)[1].split()
        if rest[0] == "Z" and rest[1] == me and comm.startswith("containerd-shim"):
            reap(int(entry.name))


def adopt_orphans() -> None:
    """Become the subreaper of what our children leave behind (containerd's shims).

    A shim daemonizes, so once it exits it waits as a zombie for whoever adopted it. Left to
    PID 1 it may linger for a while, named containerd-shim, after the run has ended; adopted
    by this process, the teardown reaps it at once.
    """
    import ctypes

    pr_set_child_subreaper = 36
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_child_subreaper, 1, 0, 0, 0)


def stop_pid(pid: int, grace: float) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if wait_gone([pid], grace):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_gone([pid], 5)


@dataclass
class Daemon:
    """One started component."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def last_lines(self, lines: int = 30) -> str:
        return tail(self.log, lines)

    def check_running(self) -> None:
        if self.proc.poll() is not None:
            raise BringUpError(
                f"{self.name} exited with {self.proc.returncode}; last lines of {self.log}:\n"
                f"{self.last_lines()}"
            )

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll `ready` until true; fail with the log's tail if it exits or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_running()
            with contextlib.suppress(Exception):
                if ready():
                    return
            time.sleep(0.2)
        self.check_running()
        raise BringUpError(
            f"{self.name}: {what} not within {timeout:g}s; last lines of {self.log}:\n"
            f"{self.last_lines()}"
        )


def start(name: str, args: Sequence[str | os.PathLike[str]], pids: Path, logs: Path) -> Daemon:
    """Start a component in its own process group, its output in `<logs>/<name>.log`."""
    pids.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(a) for a in args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (pids / f"{name}.pid").write_text(f"{proc.pid} {start_time(proc.pid)} {args[0]}\n")
    return Daemon(name, proc, log)


def recorded(pids: Path) -> dict[str, int]:
    """The processes the pidfiles name that are still the processes they were."""
    found: dict[str, int] = {}
    for pidfile in sorted(pids.glob("*.pid")) if pids.is_dir() else []:
        try:
            pid_text, started, exe = pidfile.read_text().split()[:3]
            pid = int(pid_text)
        except (OSError, ValueError):
            continue
        if start_time(pid) != started:
            continue
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/exe").resolve() != Path(exe).resolve():
                continue
        found[pidfile.stem] = pid
    return found


def processes_with(fragment: str) -> list[int]:
    """Pids whose command line contains `fragment` (e.g. this run's containerd socket)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fragment in cmdline:
            found.append(int(entry.name))
    return found
