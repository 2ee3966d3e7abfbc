"""Reading a projected token file while kubelet's atomic writer keeps rotating it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from proxy.devissuer.satoken import write_projected_token

TIMEOUT = 30.0


def read_while_rotating(
    directory: Path, filename: str, tokens: Sequence[str], rotations: int, read: Callable[[], None]
) -> tuple[list[BaseException], int]:
    """Call `read` on a thread, over and over, while `filename` is rewritten `rotations`
    times with `tokens` in turn. Returns what `read` raised (it stops at the first) and how
    many reads returned."""
    problems: list[BaseException] = []
    reads = 0
    stop = threading.Event()

    def reader() -> None:
        nonlocal reads
        deadline = time.monotonic() + TIMEOUT
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                read()
            except BaseException as exc:
                problems.append(exc)
                return
            reads += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(rotations):
            write_projected_token(directory, filename, tokens[i % len(tokens)])
    finally:
        stop.set()
        thread.join(TIMEOUT)
    return problems, reads
