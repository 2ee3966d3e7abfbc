"""The real proxy server run inside the test process, on loopback, from a thread of its own.

The in-process tier drives the same objects the `imds-proxy` process serves from: the
settings read from flags and an environment (`proxy.config`), `ProxyServer` with its bounded
token and metrics listeners, its cache and its MSAL exchange against the fake Entra ID. What
it leaves out is what only a process has: the interpreter's start, signal handling, the
drain on SIGTERM, the open-file limit, stdout and stderr (harness/proxy_process.py has those).

`InProcessProxy` answers like `ProxyProcess` (`base`, `url()`, `port`, `metrics()`,
`logs()`, `log_text()`, `stop()`), so a test reads the same either way; it starts in
milliseconds instead of an interpreter's second. Its event loop runs in a daemon thread;
tests call it over HTTP (requests, SDK subprocesses) as they call the process.

Log lines: structlog and the standard library are configured as `proxy.cli.run` does
(`proxy.logs.configure`), onto one stream that copies each line to every proxy started
here and not yet stopped. A proxy's `log_text()` is what was written while it ran; two
proxies running at once see each other's lines, and the last one started sets the level.

`build_server` is the one place the server is assembled: fixtures and tests go through
`running_in_process`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import structlog
from structlog._config import BoundLoggerLazyProxy

from harness.proxy_process import ProxyHandle, free_port
from proxy import config, logs
from proxy.server import ProxyServer

START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
_T = TypeVar("_T")


def build_server(
    settings: config.Settings,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> ProxyServer:
    """The proxy's objects as the process builds them (`proxy.server.serve`); `clock` and
    `sleep` replace the token layer's wall clock and waits (see `FakeClock.sleep`)."""
    return ProxyServer(settings, clock=clock or time.time, sleep=sleep or asyncio.sleep)


def settings_for(env: Mapping[str, str], argv: Sequence[str]) -> config.Settings:
    """What the process reads from its command line and environment."""
    return config.load(config.build_parser().parse_args(list(argv)), env)


class _LogSink(io.StringIO):
    """The one stream the proxy's loggers write to: each line goes to every running proxy."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._targets: list[io.StringIO] = []
        self._saved: tuple[list[logging.Handler], int] | None = None
        self._handler: logging.Handler | None = None

    def write(self, text: str) -> int:
        with self._lock:
            for target in self._targets:
                target.write(text)
        return len(text)

    def add(self, target: io.StringIO, level: str, fmt: str) -> None:
        root = logging.getLogger()
        with self._lock:
            if not self._targets:
                self._saved = (list(root.handlers), root.level)
            self._targets.append(target)
        logs.configure(level, fmt, stream=self)
        # Loggers bound before (by unit tests, under another configuration) write here now.
        structlog.configure(cache_logger_on_first_use=False)
        _forget_bound_loggers()
        self._handler = root.handlers[0]
        if self._saved is not None:  # keep pytest's capture handlers beside ours
            root.handlers[:] = [*self._saved[0], self._handler]

    def remove(self, target: io.StringIO) -> None:
        with self._lock:
            self._targets.remove(target)
            last = not self._targets
        if last and self._saved is not None:
            root = logging.getLogger()
            if self._handler is not None:
                root.removeHandler(self._handler)
            root.setLevel(self._saved[1])
            self._saved = None
            structlog.reset_defaults()
            _forget_bound_loggers()


def _forget_bound_loggers() -> None:
    """Module-level structlog loggers in `proxy.*` bind to the configuration on first use
    (`cache_logger_on_first_use`): unbind them so that they follow the current one."""
    for name, module in list(sys.modules.items()):
        if name != "proxy" and not name.startswith("proxy."):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, BoundLoggerLazyProxy):
                vars(value).pop("bind", None)


_SINK = _LogSink()


class InProcessProxy(ProxyHandle):
    """The proxy's server in this process; the same handle as `ProxyProcess`."""

    def __init__(
        self,
        env: Mapping[str, str],
        args: Sequence[str] = (),
        *,
        metrics: bool = True,
        imds_upstream: str | None = None,
        drain_idle: float = 0.0,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.port = free_port()
        self.metrics_port = free_port() if metrics else 0
        upstream = imds_upstream or "http://127.0.0.1:9"  # loopback: never the real IMDS
        self.settings = settings_for(
            env,
            [
                f"--proxy-port={self.port}",
                f"--metrics-port={self.metrics_port}",
                f"--imds-upstream={upstream}",
                f"--drain-idle={drain_idle:g}",
                *args,
            ],
        )
        self.server = build_server(self.settings, clock, sleep)
        self._log = io.StringIO()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> InProcessProxy:
        _SINK.add(self._log, self.settings.log_level, self.settings.log_format)
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"proxy-{self.port}", daemon=True
        )
        self._thread.start()
        try:
            self.run(self.server.start(), START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        return self

    def run(self, coroutine: Coroutine[Any, Any, _T], timeout: float = STOP_TIMEOUT) -> _T:
        """Run `coroutine` on the proxy's loop and wait (bounded) for its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def stop(self) -> None:
        """Stop the server as the process does after its drain; idempotent."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.server.stop(), loop).result(STOP_TIMEOUT)
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(loop.shutdown_default_executor(), loop).result(
                    STOP_TIMEOUT
                )
        finally:
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(STOP_TIMEOUT)
            if not loop.is_running():
                loop.close()
            _SINK.remove(self._log)

    def log_text(self) -> str:
        return self._log.getvalue()


@contextlib.contextmanager
def running_in_process(
    env: Mapping[str, str], workdir: Path | None = None, args: Sequence[str] = (), **kw: Any
) -> Iterator[InProcessProxy]:
    """`running_proxy`'s counterpart (`workdir` accepted for the same call, unused)."""
    with InProcessProxy(env, args, **kw) as proxy:
        yield proxy
