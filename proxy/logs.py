"""Structured logs: JSON lines (or key=value for people), one configuration for every logger.

structlog writes the events (an exchange, a failure, start and stop); standard-library
loggers (aiohttp, MSAL, asyncio) are rendered by the same chain, so an operator reads one
format. The per-request line is formatted by `proxy.requestlog` in the same shape, into
the same buffered stream. A redaction step removes anything shaped like a JWT from every
line, whoever wrote it, tracebacks included (it runs after they are rendered), and so do
the literal secrets registered with `redact_secret` (the App Service secret).
"""

from __future__ import annotations

import atexit
import io
import logging
import re
import sys
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

_JWT_LIKE = re.compile(r"eyJ[\w-]*\.[\w-]+\.[\w-]*")
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


_secrets: tuple[str, ...] = ()
MAX_SECRETS = 4
"""Registered secrets kept (the current one and a few it replaced)."""
MIN_SECRET_LENGTH = 8
"""Shorter values are not registered: blanking them would blank ordinary words."""


def redact_secret(value: str) -> None:
    """Blank `value` wherever it appears in a log line from now on (a shared secret that a
    malformed request may carry into a parser's error message)."""
    global _secrets
    value = value.strip()
    if len(value) >= MIN_SECRET_LENGTH and value not in _secrets:
        _secrets = (value, *_secrets)[:MAX_SECRETS]


def redact_text(text: str) -> str:
    """`text` with JWT-shaped parts (access or service-account tokens) and registered
    secrets blanked out."""
    if "eyJ" in text:
        text = _JWT_LIKE.sub("[redacted]", text)
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "[redacted]")
    return text


def redact(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """The structlog processor: `redact_text` on every string value (the rendered
    traceback included: it runs after `format_exc_info`)."""
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = redact_text(value)
    return event_dict


def enabled_for(configured: str, level: str) -> bool:
    """Whether a line at `level` is written when the configured level is `configured`."""
    return _LEVELS[level] >= _LEVELS[configured]


_stream: TextIO = sys.stdout


def buffered_stdout() -> TextIO:
    """stdout with a 64 KiB buffer: request lines are appended without a write(2) each.

    Everything is written through this one object, in order; structlog and the standard
    library flush after each of their (rare) lines, `proxy.requestlog` arms a one-shot
    flush when it buffers a request line, and `atexit` flushes at the end.
    """
    raw = io.FileIO(sys.stdout.fileno(), "w", closefd=False)
    stream = io.TextIOWrapper(io.BufferedWriter(raw, 1 << 16), encoding="utf-8")
    atexit.register(stream.flush)
    return stream


def stream() -> TextIO:
    """Where log lines go (what `configure` chose)."""
    return _stream


def configure(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Set up structlog and route the standard library's logging through it."""
    global _stream
    numeric = _LEVELS[level]
    stream = stream or buffered_stdout()
    _stream = stream
    shared: list[Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # MSAL at debug logs request details; keep it at warning unless asked for debug.
    logging.getLogger("msal").setLevel(numeric if numeric == logging.DEBUG else logging.WARNING)
    # aiohttp's access logger is replaced by our one request line.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
