"""Bounded HTTP listeners: a connection cap, a header deadline, and parser errors that echo
nothing.

aiohttp's low-level server accepts every connection, keeps one that never sends a request
for an hour, answers a request it cannot parse with plain text quoting the offending bytes,
and logs that error with the bytes in its traceback. A sidecar's port on the cluster network
(the metrics listener) would let any neighbour hold its file descriptors, and a request line
carrying a token would put the token in a log. Here:

- beyond `max_connections` open connections a new one is closed at once (reset), so a flood
  costs the process no descriptor it keeps;
- a connection has `header_timeout` seconds to complete each request's headers, counted from
  the connection's start or the previous answer (aiohttp's keep-alive timer, which 3.14
  arms at connect and does not extend while a request trickles in); idle keep-alive
  connections are closed after the same time;
- a request that cannot be parsed is answered `400` with an IMDS-style JSON body naming the
  kind of error only, and logged as one line without the request's bytes, at most once per
  `ERROR_LOG_INTERVAL` per listener (how many were suppressed is in the next line).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from proxy.logs import get_logger

log = get_logger("proxy.listener")
ERROR_LOG_INTERVAL = 10.0
_MALFORMED = b'{"error": "invalid_request", "error_description": "Malformed HTTP request"}'


class BoundedServer(web.Server):
    """`web.Server` whose connections are capped and whose errors are answered quietly."""

    def __init__(
        self,
        handler: Any,
        *,
        name: str,
        max_connections: int,
        header_timeout: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, keepalive_timeout=header_timeout, access_log=None, **kwargs)
        self.name = name
        self.max_connections = max_connections
        self.refused = 0
        """Connections closed at once because the cap was reached."""
        self.malformed = 0
        """Requests answered 400 because they could not be parsed."""
        self._logged_at = -ERROR_LOG_INTERVAL
        self._unlogged = 0

    def __call__(self) -> RequestHandler:
        return _GuardedHandler(self, loop=self._loop, **self._kwargs)

    def at_capacity(self) -> bool:
        return len(self._connections) >= self.max_connections

    def note_malformed(self, exc: BaseException | None) -> None:
        """Count it; log it (its kind only) unless a line was written moments ago."""
        self.malformed += 1
        now = time.monotonic()
        if now - self._logged_at < ERROR_LOG_INTERVAL:
            self._unlogged += 1
            return
        log.warning(
            "malformed request refused",
            listener=self.name,
            error=type(exc).__name__ if exc is not None else "unknown",
            suppressed=self._unlogged,
        )
        self._logged_at, self._unlogged = now, 0


class _GuardedHandler(RequestHandler):
    """aiohttp's per-connection protocol, with the cap and the quiet error answers."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        manager = self._manager
        if isinstance(manager, BoundedServer) and manager.at_capacity():
            manager.refused += 1
            self._manager = None  # never registered: connection_lost has nothing to undo
            cast(asyncio.Transport, transport).abort()
            return
        super().connection_made(transport)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A parse failure (or, never expected, a handler's crash): JSON that echoes nothing."""
        manager = self._manager
        if isinstance(manager, BoundedServer):
            manager.note_malformed(exc)
        if status >= 500:
            log.error("request handler failed", error=type(exc).__name__ if exc else None)
            body = b'{"error": "unknown_error", "error_description": "Internal error"}'
        else:
            body = _MALFORMED
        response = web.Response(
            status=status, body=body, headers={"Content-Type": "application/json"}
        )
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's own error lines would carry the request's bytes in the traceback."""
        exc = kw.get("exc_info")
        log.error(
            "HTTP server error",
            what=str(args[0]) if args else None,
            error=type(exc).__name__ if isinstance(exc, BaseException) else None,
        )
