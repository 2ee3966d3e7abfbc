"""The Entra exchange, built in a worker thread once the listener is up.

Building it imports MSAL and requests (and through them most of `ssl`, `http.client`
and `email`): a good part of the start-up time. Doing that off the loop, after binding,
lets the listener and `/readyz` answer meanwhile; an exchange that is asked for before
the build is done waits for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.tokens.entra import EntraExchange
    from proxy.tokens.model import AccessToken, TokenKey


class DeferredExchange:
    """Async callable like `EntraExchange`; `load()` starts (or joins) the build."""

    def __init__(self, build: Callable[[], EntraExchange]) -> None:
        self._build = build
        self._loading: asyncio.Future[EntraExchange] | None = None
        self._exchange: EntraExchange | None = None

    async def load(self) -> EntraExchange:
        if self._exchange is not None:
            return self._exchange
        if self._loading is None:
            self._loading = asyncio.ensure_future(asyncio.to_thread(self._build))
        self._exchange = await asyncio.shield(self._loading)
        return self._exchange

    async def __call__(self, key: TokenKey) -> AccessToken:
        exchange = self._exchange or await self.load()
        return await exchange(key)

    async def aclose(self) -> None:
        if self._exchange is not None:
            await self._exchange.aclose()
