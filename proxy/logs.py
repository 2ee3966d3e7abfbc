"""Structured logs: JSON lines (or key=value for people), one configuration for every logger.

structlog's own loggers do the per-request line with a level check that costs nothing
when disabled and a short processor chain when enabled. Standard-library loggers
(aiohttp, MSAL, asyncio) are rendered by the same chain, so an operator reads one format.
A redaction step removes anything shaped like a JWT from every line, whoever wrote it.
"""

from __future__ import annotations

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


def redact(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Blank out JWT-shaped text (access or service-account tokens) in any string value."""
    for key, value in event_dict.items():
        if isinstance(value, str) and "eyJ" in value:
            event_dict[key] = _JWT_LIKE.sub("[redacted]", value)
    return event_dict


def configure(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Set up structlog and route the standard library's logging through it."""
    numeric = _LEVELS[level]
    stream = stream or sys.stdout
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
            structlog.contextvars.merge_contextvars,
            *shared,
            redact,
            structlog.processors.format_exc_info,
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
                redact,
                structlog.processors.format_exc_info,
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
