"""A scripted token exchange and a recording logger, for tests of the token cache and of
the federation policy on top of it (no network, no clock but the fake one)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from proxy.tokens.model import AccessToken, TokenKey
from tests.support.clock import FakeClock

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "11111111-2222-3333-4444-555555555555"
KEY = TokenKey(TENANT, CLIENT, "https://vault.azure.net/.default")
OTHER = TokenKey(TENANT, CLIENT, "https://storage.azure.com/.default")
LIFETIME = 3600.0


class FakeExchange:
    """Records calls; answers from `by_key`, then `results`, then `failure`, else a new token.

    With `gate` set, every call waits for the event first (and counts cancellations).
    """

    def __init__(self, clock: FakeClock, lifetime: float = LIFETIME) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.calls: list[TokenKey] = []
        self.by_key: dict[TokenKey, Exception] = {}
        self.results: list[AccessToken | Exception] = []
        self.failure: Exception | None = None
        self.gate: asyncio.Event | None = None
        self.cancelled = 0
        self.issued = 0

    async def __call__(self, key: TokenKey) -> AccessToken:
        self.calls.append(key)
        if self.gate is not None:
            try:
                await self.gate.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        result: AccessToken | Exception
        if key in self.by_key:
            result = self.by_key[key]
        elif self.results:
            result = self.results.pop(0)
        elif self.failure is not None:
            result = self.failure
        else:
            result = self.mint()
        if isinstance(result, Exception):
            raise result
        return result

    def mint(self) -> AccessToken:
        self.issued += 1
        now = self.clock.now
        return AccessToken(
            value=f"token-{self.issued}",
            token_type="Bearer",
            expires_on=now + self.lifetime,
            ext_expires_on=now + 2 * self.lifetime,
            not_before=now,
            obtained_at=now,
        )


class RecordingLog:
    """Stands in for the module's structlog logger."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        def record(event: str, **fields: Any) -> None:
            self.events.append((level, event, fields))

        return record

    def named(self, event: str) -> list[dict[str, Any]]:
        return [fields for _, name, fields in self.events if name == event]
