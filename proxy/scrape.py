"""The metrics listener's handler: Prometheus `/metrics`, and `/status`, `/report` on request.

The listener is reachable from the whole cluster network, so what it does per request is
bounded: the exposition is rendered at most once per `RENDER_INTERVAL` and the same bytes
are served to every scrape in between (a flood of scrapes costs a dictionary-free copy, not
a collection each), and the pages that name the identity are served only with
`--expose-status` (`proxy.status`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from proxy.status import inspection_pages
from proxy.tokens.errors import CredentialUnavailable

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from proxy.app import Proxy

RENDER_INTERVAL = 1.0
"""Seconds a rendered exposition is reused (Prometheus scrapes every 15 s or more)."""


class MetricsHttp:
    """Low-level aiohttp handler of the metrics listener."""

    def __init__(
        self,
        registry: CollectorRegistry,
        proxy: Proxy,
        read_service_account: Callable[[], Any],
        *,
        expose_status: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST

        self._registry = registry
        self._proxy = proxy
        self._read_service_account = read_service_account
        self._pages = inspection_pages() if expose_status else {}
        self._clock = clock
        self._content_type = CONTENT_TYPE_LATEST
        self._rendered = b""
        self._rendered_at = -RENDER_INTERVAL

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method != "GET":
            return web.Response(status=405, text="method not allowed\n")
        if request.path == "/metrics":
            return web.Response(
                body=self._exposition(), headers={"Content-Type": self._content_type}
            )
        page = self._pages.get(request.path.strip("/"))
        if page is not None:
            return web.json_response(page(self._proxy))
        return web.Response(status=404, text="not found\n")

    def _exposition(self) -> bytes:
        now = self._clock()
        if now - self._rendered_at >= RENDER_INTERVAL:
            from prometheus_client import generate_latest

            with contextlib.suppress(CredentialUnavailable):  # absent: the gauge is left out
                self._read_service_account()
            self._rendered = generate_latest(self._registry)  # the collector reads live state
            self._rendered_at = now
        return self._rendered
