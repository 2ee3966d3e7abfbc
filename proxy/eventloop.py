"""Which event loop runs the proxy: uvloop when it is installed, asyncio's own otherwise.

uvloop's transports and HTTP hand-off are written in C (libuv), so a cached-token answer
costs the proxy less CPU than aiohttp's ceiling on the stock loop. It stays optional: a
platform without a wheel, or `--event-loop asyncio`, runs on asyncio's loop unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class EventLoopUnavailable(RuntimeError):
    """`--event-loop uvloop` was asked for and uvloop cannot be imported."""


def runner(choice: str) -> asyncio.Runner:
    """An `asyncio.Runner` on the loop `choice` names; raises `EventLoopUnavailable` before
    anything runs (so no coroutine is left unawaited)."""
    return asyncio.Runner(loop_factory=_loop_factory(choice))


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if choice == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise EventLoopUnavailable("--event-loop uvloop: uvloop is not installed") from None
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def running_loop_name() -> str:
    """`uvloop` or `asyncio`: what the start-up log line and the build-info metric report."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"
