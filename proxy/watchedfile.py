"""A file that is replaced rather than rewritten, read again only when it was replaced.

kubelet rotates projected and Secret volumes by pointing a `..data` symlink at a new
directory, and cert-manager's Secrets arrive the same way. So the path is stat'ed through
the links and its identity (device, inode, size, mtime) compared: a swap brings a new
inode even when size and mtime match, and only then is the content read and parsed again.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar, cast

T = TypeVar("T")

Stamp = tuple[int, int, int, int]


def stamp(path: str) -> Stamp:
    """The identity of the file `path` names now, through its links; raises `OSError`."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class WatchedFile(Generic[T]):
    """`parse(content)` of the file's current content, parsed once per replacement.

    An error (an `OSError` reading, or what `parse` raises) is raised to the caller and
    forgets the content, so a file that turned bad never hides behind its old value and
    the next look reads it again. With `min_interval`, looks closer together than that
    return (or raise) the last outcome without a stat. Safe to share between threads.
    """

    def __init__(
        self,
        path: str,
        parse: Callable[[bytes], T],
        *,
        min_interval: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._parse = parse
        self._min_interval = min_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp: Stamp | None = None
        self._value: T | None = None
        self._error: Exception | None = None
        self._looked_at: float | None = None

    def current(self) -> T:
        with self._lock:
            now = self._clock()
            if self._looked_at is not None and now - self._looked_at < self._min_interval:
                if self._error is not None:
                    raise self._error.with_traceback(None)
                return cast(T, self._value)
            self._looked_at = now
            try:
                self._look()
            except Exception as exc:
                self._stamp, self._value, self._error = None, None, exc
                raise
            self._error = None
            return cast(T, self._value)

    def _look(self) -> None:
        now = stamp(self.path)
        if now != self._stamp:
            with open(self.path, "rb") as handle:
                content = handle.read()
            self._value, self._stamp = self._parse(content), now
