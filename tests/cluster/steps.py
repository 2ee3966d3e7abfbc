"""Running the bring-up's commands: bounded in time, their output kept in a log file.

A bring-up step that fails must say why in the test report, so every command's output goes
to a file whose last lines end up in the exception message.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


class BringUpError(RuntimeError):
    """A step of the cluster's bring-up failed; the message carries the evidence."""


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file, indented, for a failure message."""
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"    (no log: {e})"
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def run(
    args: Sequence[str | os.PathLike[str]],
    *,
    log: Path,
    timeout: float,
    what: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Run one command to completion, appending its output to `log`; raise with its tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(map(str, args))}\n".encode())
        out.flush()
        try:
            proc = subprocess.run(
                [str(a) for a in args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env=dict(env) if env is not None else None,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise BringUpError(
                f"{what}: no result within {timeout:g}s; last lines of {log}:\n{tail(log)}"
            ) from None
    if proc.returncode != 0:
        raise BringUpError(
            f"{what}: exit {proc.returncode} after {time.monotonic() - started:.0f}s; "
            f"last lines of {log}:\n{tail(log)}"
        )


def output(args: Sequence[str], *, timeout: float = 30) -> str:
    """A short command's stdout (raising on failure): for queries such as `ip link`."""
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, check=True, stdin=subprocess.DEVNULL
    ).stdout
