"""A clock that moves only when a test says so."""

from __future__ import annotations

import asyncio

T0 = 1_700_000_000.0
"""A start time whose sums with whole seconds are exact floats."""


class FakeClock:
    """Callable like `time.time`; `now` can also be set directly."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        """A wait that moves this clock instead of passing real time (for code that takes
        a `sleep`, such as the token cache's retry delay)."""
        self.advance(seconds)
        await asyncio.sleep(0)
