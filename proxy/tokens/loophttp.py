"""MSAL's HTTP client, run on the proxy's event loop: one deadline per exchange, bounded bodies.

MSAL is synchronous and calls `post`/`get` from a worker thread. A blocking client's timeout
applies to each read, so a peer trickling a byte every few seconds holds the thread (and the
caller) for minutes. Here each call is an aiohttp request scheduled on the loop with the time
left until the exchange's deadline as its *total* timeout; the thread only waits for it, and
is released at the deadline whatever the peer does. A body larger than `max_body` is not
read beyond that size and fails the call: nothing Entra sends is kept, logged or passed on
unbounded.

The deadline is per thread (`deadline`, set by the exchange before calling MSAL), and so is
the last response's status and `Retry-After`, which MSAL's result dict does not carry.
`close()` fails every call still waiting, so shutdown never waits for Entra.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ssl
import threading
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from proxy.tokens.errors import EntraUnavailable

MAX_BODY = 64 * 1024
"""Entra's token and discovery answers are a few KB; anything larger is not Entra's."""


class HttpAnswer:
    """The response shape MSAL reads: `status_code`, `text`, `headers`, `raise_for_status`."""

    __slots__ = ("headers", "status_code", "text")

    def __init__(self, status: int, text: str, headers: Mapping[str, str]) -> None:
        self.status_code = status
        self.text = text
        self.headers = dict(headers)

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise EntraUnavailable(f"Entra ID answered {self.status_code}")


class LoopHttpClient:
    """Blocking `post`/`get` for MSAL's worker threads, performed by aiohttp on the loop
    that `bind` names (the one the exchanges are awaited on)."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        *,
        user_agent: str | None = None,
        max_body: int = MAX_BODY,
    ) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ssl = ssl_context
        self._headers = {"User-Agent": user_agent} if user_agent else {}
        self._max_body = max_body
        self._session: aiohttp.ClientSession | None = None
        self._local = threading.local()
        self._waiting: set[concurrent.futures.Future[HttpAnswer]] = set()
        self._lock = threading.Lock()
        self._closed = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    # -- per exchange (worker thread) ---------------------------------------------------

    def start_exchange(self, deadline: float) -> None:
        """Every call this thread makes until the next start must end by `deadline`
        (`time.monotonic()`); nothing is recorded yet."""
        self._local.deadline = deadline
        self._local.status = self._local.retry_after = None

    def last_response(self) -> tuple[int | None, str | None]:
        return getattr(self._local, "status", None), getattr(self._local, "retry_after", None)

    def post(
        self,
        url: str,
        params: Mapping[str, str] | None = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        **_: Any,
    ) -> HttpAnswer:
        return self._call("POST", url, params, data, headers)

    def get(
        self,
        url: str,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        **_: Any,
    ) -> HttpAnswer:
        return self._call("GET", url, params, None, headers)

    def _call(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        data: Any,
        headers: Mapping[str, str] | None,
    ) -> HttpAnswer:
        deadline = getattr(self._local, "deadline", None)
        left = (deadline - time.monotonic()) if deadline is not None else 0.0
        if left <= 0 or self._loop is None:
            raise EntraUnavailable("Entra ID timed out (the exchange's deadline passed)")
        future = asyncio.run_coroutine_threadsafe(
            self._request(method, url, params, data, headers, left), self._loop
        )
        with self._lock:
            if self._closed:
                future.cancel()
                raise EntraUnavailable("the proxy is shutting down")
            self._waiting.add(future)
        try:
            # The request's own total timeout ends it first; this is a backstop.
            answer = future.result(timeout=left + 1.0)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            future.cancel()
            raise EntraUnavailable(
                "the proxy is shutting down"
                if self._closed
                else "Entra ID timed out (the exchange's deadline passed)"
            ) from None
        finally:
            with self._lock:
                self._waiting.discard(future)
        self._local.status = answer.status_code
        self._local.retry_after = answer.headers.get("Retry-After")
        return answer

    # -- on the loop --------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        data: Any,
        headers: Mapping[str, str] | None,
        timeout: float,
    ) -> HttpAnswer:
        if self._closed:  # scheduled before `aclose`, run after it: no new session
            raise EntraUnavailable("the proxy is shutting down")
        session = self._session
        if session is None or session.closed:
            # trust_env: HTTPS_PROXY/NO_PROXY as for any client; the CA is ours, not env's.
            session = self._session = aiohttp.ClientSession(
                trust_env=True, headers=self._headers, auto_decompress=True
            )
        try:
            async with session.request(
                method,
                url,
                params=params,
                data=data,
                headers=headers,
                ssl=self._ssl,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as response:
                body = await _bounded_body(response, self._max_body)
                text = body.decode(response.get_encoding() if body else "utf-8", "replace")
                return HttpAnswer(response.status, text, response.headers)
        except TimeoutError:
            raise EntraUnavailable("Entra ID timed out (the exchange's deadline passed)") from None
        except aiohttp.ClientSSLError:
            raise EntraUnavailable(
                "TLS verification failed (set REQUESTS_CA_BUNDLE to trust its CA)"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise EntraUnavailable(f"Entra ID did not answer: {_describe(exc)}") from None

    def close(self) -> None:
        """Fail the calls still waiting (their threads return at once) and refuse new ones."""
        with self._lock:
            self._closed = True
            waiting = list(self._waiting)
        for future in waiting:
            future.cancel()

    async def aclose(self) -> None:
        self.close()
        if self._session is not None:
            await self._session.close()


async def _bounded_body(response: aiohttp.ClientResponse, limit: int) -> bytes:
    if response.content_length is not None and response.content_length > limit:
        raise EntraUnavailable(f"Entra ID answered {response.status} with an oversized body")
    chunks: list[bytes] = []
    size = 0
    while chunk := await response.content.read(limit + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise EntraUnavailable(f"Entra ID answered {response.status} with an oversized body")
    return b"".join(chunks)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError | ConnectionError):
        return "connection failed"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the connection closed early"
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        return "the answer could not be read"
    return type(exc).__name__
