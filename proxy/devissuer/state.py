"""The issuer's mutable world: app registrations, behaviour knobs and counters.

Everything here is touched only from the event loop thread and never across an ``await``,
which is what makes the counters exact under any number of concurrent requests.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast, get_args

from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.devissuer.satoken import ServiceAccountTokenSource
from proxy.devissuer.signing import SigningKey
from proxy.wellknown import TOKEN_EXCHANGE_AUDIENCE

Mode = Literal[
    "normal",
    "throttle",
    "fail",
    "issuer_unreachable",
    "hang",
    "trickle",
    "html",
    "truncated",
    "huge",
]
MODES: tuple[Mode, ...] = get_args(Mode)
"""How the token endpoint answers. Beyond the failures Entra ID really gives, the hostile
ones a client must survive: `hang` (no answer for `HANG_SECONDS`), `trickle` (a 200 whose
body comes one byte every `delay` seconds, 1 by default), `html` and `truncated` (a 400
that is not OAuth JSON) and `huge` (a 10 MB OAuth error)."""
"""``issuer_unreachable``: Entra cannot fetch the cluster issuer's discovery (AADSTS90061)."""
DEFAULT_TOKEN_LIFETIME = 3599
"""Entra's usual ``expires_in`` for app-only tokens (one hour minus a second)."""


@dataclass(frozen=True)
class FederatedCredential:
    """One federated identity credential of an app registration, as Entra stores it."""

    issuer: str
    subject: str
    audiences: tuple[str, ...] = (TOKEN_EXCHANGE_AUDIENCE,)
    effective_at: float = 0.0
    """Unix time from which Entra honours it: a new credential takes time to propagate."""

    def to_json(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "subject": self.subject,
            "audiences": list(self.audiences),
            "effective_at": self.effective_at,
        }

    def effective(self, now: float) -> bool:
        return now >= self.effective_at

    @classmethod
    def from_json(cls, data: object) -> FederatedCredential:
        if not isinstance(data, dict):
            raise ValueError("a federated credential must be an object")
        issuer, subject = data.get("issuer"), data.get("subject")
        audiences = data.get("audiences", [TOKEN_EXCHANGE_AUDIENCE])
        if not isinstance(issuer, str) or not issuer:
            raise ValueError("'issuer' must be a non-empty string")
        if not isinstance(subject, str) or not subject:
            raise ValueError("'subject' must be a non-empty string")
        if (
            not isinstance(audiences, list)
            or not audiences
            or not all(isinstance(a, str) and a for a in audiences)
        ):
            raise ValueError("'audiences' must be a non-empty list of strings")
        delay = data.get("effective_after", 0)
        if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
            raise ValueError("'effective_after' must be a number of seconds >= 0")
        return cls(
            issuer=issuer,
            subject=subject,
            audiences=tuple(audiences),
            effective_at=time.time() + delay if delay else 0.0,
        )


@dataclass(frozen=True)
class Behaviour:
    """How the token endpoint misbehaves; see :meth:`updated` for the knobs."""

    delay: float = 0.0
    mode: Mode = "normal"
    retry_after: float = 5.0
    status: int = 503
    token_lifetime: int = DEFAULT_TOKEN_LIFETIME
    unknown_resources: frozenset[str] = frozenset()
    count: int | None = None
    """How many more token requests ``mode`` applies to; ``None`` means until changed."""

    def to_json(self) -> dict[str, Any]:
        return {
            "delay": self.delay,
            "mode": self.mode,
            "retry_after": self.retry_after,
            "status": self.status,
            "token_lifetime": self.token_lifetime,
            "unknown_resources": sorted(self.unknown_resources),
            "count": self.count,
        }

    def updated(self, knobs: Mapping[str, Any]) -> Behaviour:
        """A copy with ``knobs`` applied; raises ``ValueError`` naming the bad knob."""
        changes: dict[str, Any] = {}
        for name, value in knobs.items():
            if name in ("delay", "retry_after"):
                changes[name] = _number(name, value, minimum=0.0)
            elif name == "mode":
                if value not in MODES:
                    raise ValueError(f"'mode' must be one of {', '.join(MODES)}")
                changes[name] = cast(Mode, value)
            elif name == "status":
                if not isinstance(value, int) or isinstance(value, bool) or not 500 <= value <= 599:
                    raise ValueError("'status' must be an integer from 500 to 599")
                changes[name] = value
            elif name == "token_lifetime":
                if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                    raise ValueError("'token_lifetime' must be a positive integer")
                changes[name] = value
            elif name == "unknown_resources":
                if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
                    raise ValueError("'unknown_resources' must be a list of strings")
                changes[name] = frozenset(value)
            elif name == "count":
                if value is not None and (
                    not isinstance(value, int) or isinstance(value, bool) or value < 1
                ):
                    raise ValueError("'count' must be a positive integer or null")
                changes[name] = value
            else:
                raise ValueError(f"unknown behaviour knob {name!r}")
        return replace(self, **changes)

    @property
    def retry_after_header(self) -> str:
        return str(math.ceil(self.retry_after))


def _number(name: str, value: object, *, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name!r} must be a number")
    if value < minimum:
        raise ValueError(f"{name!r} must be >= {minimum:g}")
    return float(value)


@dataclass
class Stats:
    """Request counters, read by tests and benchmarks through ``/_control/stats``."""

    token_requests: int = 0
    by_outcome: Counter[str] = field(default_factory=Counter)
    by_client_id: Counter[str] = field(default_factory=Counter)
    by_scope: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    openid_config_requests: int = 0
    jwks_requests: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "token_requests": {
                "total": self.token_requests,
                "by_outcome": dict(self.by_outcome),
                "by_client_id": dict(self.by_client_id),
                "by_scope": dict(self.by_scope),
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
            },
            "openid_config_requests": self.openid_config_requests,
            "jwks_requests": self.jwks_requests,
        }


@dataclass
class IssuerState:
    """One tenant of the fake Entra ID and the knobs that steer it."""

    tenant_id: str
    signing_key: SigningKey
    service_account_keys: dict[str, SigningKey]
    """Keys accepted on client assertions, by ``kid`` (the cluster's OIDC JWKS)."""
    federated_credentials: dict[str, tuple[FederatedCredential, ...]]
    """App registrations by client id, each with its federated credentials."""
    default_token_lifetime: int = DEFAULT_TOKEN_LIFETIME
    trusted_keys: dict[str, rsa.RSAPublicKey] = field(default_factory=dict)
    """An external issuer's keys by ``kid`` (a real cluster's JWKS, ``--trust-jwks``)."""
    sa_tokens: ServiceAccountTokenSource | None = None
    info: dict[str, Any] = field(default_factory=dict)
    """What ``GET /_control/info`` reports (set by the server once it is bound)."""
    behaviour: Behaviour = field(init=False)
    stats: Stats = field(default_factory=Stats, init=False)
    _initial_credentials: dict[str, tuple[FederatedCredential, ...]] = field(init=False)
    _initial_sa: tuple[str, float] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.behaviour = Behaviour(token_lifetime=self.default_token_lifetime)
        self._initial_credentials = dict(self.federated_credentials)
        if self.sa_tokens is not None:
            self._initial_sa = (self.sa_tokens.subject, self.sa_tokens.lifetime)

    def knows_tenant(self, tenant: str) -> bool:
        return tenant.lower() == self.tenant_id.lower()

    def take_mode(self) -> Mode:
        """The mode for this request, consuming one use of a counted mode."""
        current = self.behaviour
        if current.mode != "normal" and current.count is not None:
            remaining = current.count - 1
            self.behaviour = (
                replace(current, count=remaining)
                if remaining
                else replace(current, mode="normal", count=None)
            )
        return current.mode

    def reset(self) -> None:
        """Counters, behaviour and federated credentials back to how the server started.

        A service-account token whose subject or lifetime was changed by a rotation is
        rotated back, so the next test sees a token matching the original credentials.
        """
        self.stats = Stats(in_flight=self.stats.in_flight)
        self.behaviour = Behaviour(token_lifetime=self.default_token_lifetime)
        self.federated_credentials = dict(self._initial_credentials)
        if self.sa_tokens is not None and self._initial_sa is not None:
            subject, lifetime = self._initial_sa
            if (self.sa_tokens.subject, self.sa_tokens.lifetime) != (subject, lifetime):
                self.sa_tokens.rotate(subject=subject, lifetime=lifetime)
