"""Pass allowlisted, non-identity metadata requests to the real IMDS, and fail fast.

Only `proxy.paths` decides what is forwarded; this module sends the canonical path it was
given, never the raw one. SDK probes give up after 0.5-3 s and need *some* HTTP answer, so
the upstream gets 1 s to accept and 2.5 s to answer; after a failure it is remembered as
down for a few seconds and answered from that memory at once, then tried again.

The proxy's own connections leave as its uid (`proxy.wellknown.PROXY_UID`), which the
init program exempts from the redirect, so they reach the real 169.254.169.254 rather than
looping back here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from aiohttp import ClientError, ClientSession, ClientTimeout, DummyCookieJar, web
from yarl import URL

from proxy.imds import JSON, error_body

# RFC 9110 hop-by-hop headers, plus those the client library recomputes itself.
_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
    )
)
_MAX_BODY = 4 * 1024 * 1024
CONNECT_TIMEOUT = 1.0
TOTAL_TIMEOUT = 2.5
DOWN_FOR = 5.0


class Forwarder:
    """Relays one request and its answer; an unreachable upstream is a quick 502 or 504.

    `upstream=None` turns forwarding off (IMDS restricted or absent in the cluster): every
    forwardable path is answered at once with a JSON 404.
    """

    def __init__(
        self,
        upstream: str | None,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        total_timeout: float = TOTAL_TIMEOUT,
        down_for: float = DOWN_FOR,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstream = upstream.rstrip("/") if upstream else None
        self._timeout = ClientTimeout(
            total=total_timeout, connect=connect_timeout, sock_connect=connect_timeout
        )
        self._down_for = down_for
        self._clock = clock
        self._session: ClientSession | None = None
        self._down_until = 0.0
        self._down_answer: tuple[int, str, str] = (502, "bad_gateway", "")

    async def start(self) -> None:
        if self.upstream is None:
            return
        self._session = ClientSession(
            timeout=self._timeout,
            auto_decompress=False,
            cookie_jar=DummyCookieJar(),
            trust_env=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def __call__(self, request: web.BaseRequest, path: str) -> web.Response:
        """Forward `request` as `path` (canonical, already judged forwardable)."""
        if self.upstream is None or self._session is None:
            return _answer(
                404,
                "not_found",
                "instance metadata is not forwarded from this pod (--imds-upstream=none)",
            )
        now = self._clock()
        if now < self._down_until:
            status, error, description = self._down_answer
            return _answer(status, error, description, retry_after=self._down_until - now)
        query = request.rel_url.raw_query_string
        url = URL(self.upstream + path + ("?" + query if query else ""), encoded=True)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        try:
            body = await request.read() if request.can_read_body else None
            async with self._session.request(
                request.method, url, headers=headers, data=body, allow_redirects=False
            ) as upstream:
                payload = await upstream.content.read(_MAX_BODY + 1)
                if len(payload) > _MAX_BODY:
                    return _answer(
                        502, "bad_gateway", "the instance metadata service answered too much"
                    )
                reply_headers = {
                    k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP
                }
                return web.Response(status=upstream.status, body=payload, headers=reply_headers)
        except TimeoutError:
            return self._went_down(
                504,
                "gateway_timeout",
                f"the instance metadata service at {self.upstream} did not answer in time",
            )
        except ClientError as exc:
            return self._went_down(
                502,
                "bad_gateway",
                f"the instance metadata service at {self.upstream} is unreachable "
                f"({type(exc).__name__})",
            )
        except web.HTTPRequestEntityTooLarge:
            return _answer(413, "invalid_request", "the request body is too large")
        except OSError:  # the caller went away while sending its body
            return _answer(400, "invalid_request", "the request body could not be read")

    def _went_down(self, status: int, error: str, description: str) -> web.Response:
        """Remember the failure so the next probes are answered at once."""
        self._down_until = self._clock() + self._down_for
        self._down_answer = (status, error, description + "; not retried for a few seconds")
        return _answer(status, error, description, retry_after=self._down_for)


def _answer(
    status: int, error: str, description: str, retry_after: float | None = None
) -> web.Response:
    headers = {"Content-Type": JSON}
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return web.Response(status=status, body=error_body(error, description), headers=headers)
