"""Pass every other `/metadata/*` request to the real IMDS, with bounded timeouts.

The proxy's own connections leave as uid 1501, which the init program exempts from
the redirect, so they reach the real 169.254.169.254 rather than looping back here.
"""

from __future__ import annotations

from aiohttp import ClientError, ClientSession, ClientTimeout, DummyCookieJar, web

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


class Forwarder:
    """Relays one request and its answer; an unreachable upstream is a 502, never a hang."""

    def __init__(self, upstream: str, *, connect_timeout: float = 2.0, total_timeout: float = 10.0):
        self.upstream = upstream.rstrip("/")
        self._timeout = ClientTimeout(total=total_timeout, sock_connect=connect_timeout)
        self._session: ClientSession | None = None

    async def start(self) -> None:
        self._session = ClientSession(
            timeout=self._timeout,
            auto_decompress=False,
            cookie_jar=DummyCookieJar(),
            trust_env=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def __call__(self, request: web.BaseRequest) -> web.Response:
        assert self._session is not None, "Forwarder.start() was not awaited"
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        try:
            body = await request.read() if request.can_read_body else None
            async with self._session.request(
                request.method,
                self.upstream + request.rel_url.path_qs,
                headers=headers,
                data=body,
                allow_redirects=False,
            ) as upstream:
                payload = await upstream.content.read(_MAX_BODY + 1)
                if len(payload) > _MAX_BODY:
                    return _bad_gateway("the instance metadata service answered too much")
                reply_headers = {
                    k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP
                }
                return web.Response(status=upstream.status, body=payload, headers=reply_headers)
        except TimeoutError:
            return _bad_gateway(f"the instance metadata service at {self.upstream} timed out")
        except ClientError as exc:
            return _bad_gateway(
                f"the instance metadata service at {self.upstream} is unreachable "
                f"({type(exc).__name__})"
            )
        except web.HTTPRequestEntityTooLarge:
            return _answer(413, "invalid_request", "the request body is too large")
        except OSError:  # the caller went away while sending its body
            return _answer(400, "invalid_request", "the request body could not be read")


def _bad_gateway(description: str) -> web.Response:
    return _answer(502, "bad_gateway", description)


def _answer(status: int, error: str, description: str) -> web.Response:
    return web.Response(
        status=status, body=error_body(error, description), headers={"Content-Type": JSON}
    )
