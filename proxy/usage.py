"""Which callers asked for tokens, how often, first and last: the migration report's facts.

On the request path this costs one header lookup and one dictionary lookup for a caller
whose User-Agent names its SDK (the others add four header lookups): the classification
is remembered per raw header values (up to 1,024 sets, then forgotten at once), and
counters are reached through the remembered slot. Callers are kept per (family, version)
up to a limit; beyond it they are counted together under `other`, so ten thousand invented
versions cost one entry, not ten thousand.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from multidict import istr

from proxy.callers import OTHER, Caller, caller, classify, classify_agent

MAX_CALLERS = 64
MAX_REMEMBERED_HEADERS = 1024
MAX_REMEMBERED_AGENT = 512
"""Longer agents are classified each time instead: the memos stay under ~2 MB."""
USER_AGENT = istr("User-Agent")
CLIENT_SKU = istr("x-client-SKU")
CLIENT_VERSION = istr("x-client-Ver")
CONTENT_TYPE = istr("Content-Type")
ACCEPT = istr("Accept")
"""`istr` names: a case-insensitive lookup without folding the name per request."""


@dataclass(slots=True)
class Seen:
    """One caller's requests and when they came."""

    caller: Caller
    requests: int
    first_seen: float
    last_seen: float


@dataclass(slots=True)
class _Count:
    value: int = 0


@dataclass(slots=True)
class _Slot:
    """What a set of header values leads to: its entry, its metric series, its log fields."""

    seen: Seen
    label: _Count
    caller: Caller


class CallerUsage:
    """Every token request's caller, classified once per distinct set of header values."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        limit: int = MAX_CALLERS,
        remembered: int = MAX_REMEMBERED_HEADERS,
    ) -> None:
        self._clock = clock
        self._limit = limit
        self._remembered = remembered
        self.started_at = clock()
        self.last_request_at: float | None = None
        self._by_agent: dict[str | None, _Slot] = {}
        self._by_headers: dict[tuple[str | None, ...], _Slot] = {}
        self._undecided: set[str | None] = set()
        """Agents that name no SDK of their own (MSAL, runtimes): their other headers decide."""
        self._labels: dict[tuple[str, str], _Count] = {}
        self._seen: dict[tuple[str, str], Seen] = {}

    def observe(self, headers: Mapping[str, str]) -> Caller:
        """Count one token request; returns the caller (its own request-log fields)."""
        agent = headers.get(USER_AGENT)
        slot = self._by_agent.get(agent)
        if slot is None:
            slot = self._slot(headers, agent)
        now = self._clock()
        self.last_request_at = now
        slot.label.value += 1
        seen = slot.seen
        seen.requests += 1
        seen.last_seen = now
        return slot.caller

    def _slot(self, headers: Mapping[str, str], agent: str | None) -> _Slot:
        memo: dict[Any, _Slot]
        key: Any
        found = None if agent in self._undecided else classify_agent(agent)
        if found is not None:
            memo, key = self._by_agent, agent
        else:
            if len(self._undecided) >= self._remembered:
                self._undecided.clear()
            if agent is None or len(agent) <= MAX_REMEMBERED_AGENT:
                self._undecided.add(agent)  # its other headers decide: look them up next time
            memo = self._by_headers
            key = (agent, headers.get(CLIENT_SKU), headers.get(CLIENT_VERSION))
            key += (headers.get(CONTENT_TYPE), headers.get(ACCEPT))
            known = memo.get(key)
            if known is not None:
                return known
            found = classify(*key)
        label = (found.family.metric_label, found.supports)
        count = self._labels.get(label)
        if count is None:  # families x verdicts: a few dozen at most
            count = self._labels[label] = _Count()
        slot = _Slot(self._entry(found), count, found)
        if agent is not None and len(agent) > MAX_REMEMBERED_AGENT:
            return slot  # no SDK sends that much: not worth memory
        if len(memo) >= self._remembered:  # 10,000 distinct agents: memory stays flat
            memo.clear()
        memo[key] = slot
        return slot

    def _entry(self, found: Caller) -> Seen:
        seen = self._seen.get(found.key)
        if seen is None:
            kept = found if len(self._seen) < self._limit else caller(OTHER)
            seen = self._seen.get(kept.key)
            if seen is None:
                now = self._clock()
                seen = self._seen[kept.key] = Seen(kept, 0, now, now)
        return seen

    @property
    def by_label(self) -> dict[tuple[str, str], int]:
        """Requests by (family label, supports_workload_identity): the metric's series."""
        return {label: count.value for label, count in self._labels.items() if count.value}

    def remembered(self) -> int:
        """Distinct header values remembered now (each memo bounded by `remembered`)."""
        return len(self._by_agent) + len(self._by_headers) + len(self._undecided)

    def report(self) -> dict[str, Any]:
        """The facts `imds-proxy report` reads, as JSON-ready values."""
        entries = sorted(self._seen.values(), key=lambda s: -s.last_seen)
        return {
            "generated_at": self._clock(),
            "started_at": self.started_at,
            "last_token_request_at": self.last_request_at,
            "token_requests": sum(s.requests for s in entries),
            "callers": [
                {
                    "client": s.caller.family.name,
                    "title": s.caller.family.title,
                    "kind": s.caller.family.kind,
                    "version": s.caller.version or None,
                    "supports_workload_identity": s.caller.supports,
                    "minimum_version": s.caller.family.minimum,
                    "advice_kind": s.caller.advice_kind,
                    "advice": s.caller.advice,
                    "requests": s.requests,
                    "first_seen": s.first_seen,
                    "last_seen": s.last_seen,
                }
                for s in entries
            ],
        }
