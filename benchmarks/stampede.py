"""A cold stampede: many first requests at once against a proxy that holds no token yet.

This is what a pod start with many threads (or a fleet restart) looks like to the proxy.
Single flight means they all wait for one Entra call and all get the same token; the
caller counts Entra's calls, this module only sends the burst and checks the answers.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

REQUEST_TIMEOUT = 30.0


@dataclass(frozen=True)
class Burst:
    """The answers to one burst: status counts and the distinct tokens handed out."""

    requests: int
    statuses: dict[str, int]
    distinct_tokens: int
    seconds: float
    errors: list[str] = field(default_factory=list)

    @property
    def all_ok_same_token(self) -> bool:
        return self.statuses == {"200": self.requests} and self.distinct_tokens == 1

    @property
    def failed(self) -> int:
        return self.requests - self.statuses.get("200", 0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "statuses": self.statuses,
            "distinct_tokens": self.distinct_tokens,
            "seconds": self.seconds,
            "errors": self.errors[:10],
            "all_ok_same_token": self.all_ok_same_token,
            "failed": self.failed,
        }


async def _one(session: aiohttp.ClientSession, url: str) -> tuple[str, str | None]:
    try:
        async with session.get(url, headers={"Metadata": "true"}) as response:
            if response.status != 200:
                return str(response.status), None
            body = await response.json()
            return "200", str(body["access_token"])
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
        return f"error:{type(exc).__name__}", None


async def burst(url: str, count: int = 500) -> Burst:
    """`count` concurrent GETs of `url` in one gather, each on its own connection."""
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=0)  # no pool limit: all requests in flight at once
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = loop.time()
        answers = await asyncio.gather(*(_one(session, url) for _ in range(count)))
        seconds = loop.time() - started
    statuses = Counter(status for status, _ in answers)
    tokens = {token for _, token in answers if token is not None}
    return Burst(
        requests=count,
        statuses=dict(statuses),
        distinct_tokens=len(tokens),
        seconds=round(seconds, 3),
        errors=sorted(status for status in statuses if status.startswith("error:")),
    )


def run(url: str, count: int = 500) -> Burst:
    return asyncio.run(burst(url, count))
