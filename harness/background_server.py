"""A socketserver served from a daemon thread for the length of a ``with`` block.

The tests' loopback stand-ins (IMDS, Resource Manager, a CONNECT tunnel) differ in what they
answer, not in how they run: each builds its server, then hands it to `serve_in_background`.
"""

from __future__ import annotations

import socketserver
import threading
from types import TracebackType
from typing import Self

POLL_INTERVAL = 0.02
"""How often the serving thread looks for a shutdown: `shutdown()` waits up to this long
(socketserver's default, half a second, was paid by every test that used a stand-in)."""


class BackgroundServer:
    """Base for stand-ins: `with` starts the server's thread, leaving it shuts it down."""

    _server: socketserver.BaseServer
    _thread: threading.Thread

    def serve_in_background(self, server: socketserver.BaseServer) -> None:
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(POLL_INTERVAL,), daemon=True
        )

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
