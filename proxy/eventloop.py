"""Which event loop runs the proxy: uvloop when it is installed, asyncio's own otherwise.

uvloop's transports and HTTP hand-off are written in C (libuv), so a cached-token answer
costs the proxy less CPU than aiohttp's ceiling on the stock loop. It stays optional: a
platform without a wheel, or `--event-loop asyncio`, runs on asyncio's loop unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

CHOICES = ("auto", "uvloop", "asyncio")


class EventLoopUnavailable(RuntimeError):
    """`--event-loop uvloop` was asked for and uvloop cannot be imported."""


def loop_factory(choice: str) -> tuple[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The name of the loop that will run and a factory for it (for `asyncio.Runner`)."""
    if choice == "asyncio":
        return "asyncio", asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise EventLoopUnavailable("--event-loop uvloop: uvloop is not installed") from None
        return "asyncio", asyncio.new_event_loop
    return "uvloop", uvloop.new_event_loop


def running_loop_name() -> str:
    """`uvloop` or `asyncio`: what the start-up log line and the build-info metric report."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"
