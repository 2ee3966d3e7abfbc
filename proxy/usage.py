"""Which callers asked for tokens, how often, first and last: the migration report's facts.

Kept per (family, version) up to a limit; callers beyond it are counted together under
`other`, so ten thousand invented versions cost one entry, not ten thousand. The counts
per (family, verdict) feed the metric; the entries feed `GET /report`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxy.callers import OTHER, Caller, CallerClassifier, caller

MAX_CALLERS = 64


@dataclass(slots=True)
class Seen:
    """One caller's requests and when they came."""

    caller: Caller
    requests: int
    first_seen: float
    last_seen: float


class CallerUsage:
    """Every token request's caller, classified once per distinct set of header values."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        limit: int = MAX_CALLERS,
        classifier: CallerClassifier | None = None,
    ) -> None:
        self._clock = clock
        self._limit = limit
        self.classify = classifier or CallerClassifier()
        self.started_at = clock()
        self.last_request_at: float | None = None
        self.by_label: dict[tuple[str, str], int] = {}
        """Requests by (family name, supports_workload_identity): the metric's series."""
        self._seen: dict[tuple[str, str], Seen] = {}
        self._other = caller(OTHER)

    def observe(self, headers: Any) -> str:
        """Count one token request; returns its request-log fields."""
        found = self.classify(headers)
        now = self._clock()
        self.last_request_at = now
        label = (found.family.name, found.supports)
        self.by_label[label] = self.by_label.get(label, 0) + 1
        seen = self._seen.get(found.key)
        if seen is None:
            kept = found if len(self._seen) < self._limit else self._other
            seen = self._seen.get(kept.key)
            if seen is None:
                seen = self._seen[kept.key] = Seen(kept, 0, now, now)
        seen.requests += 1
        seen.last_seen = now
        return found.log_fields

    def report(self) -> dict[str, Any]:
        """The facts `imds-proxy report` reads, as JSON-ready values."""
        callers = [
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
            for s in sorted(self._seen.values(), key=lambda s: -s.last_seen)
        ]
        return {
            "generated_at": self._clock(),
            "started_at": self.started_at,
            "last_token_request_at": self.last_request_at,
            "token_requests": sum(s.requests for s in self._seen.values()),
            "callers": callers,
        }
