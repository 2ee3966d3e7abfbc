"""Why a token request gets no token, as plain data in no protocol's shape.

A failure is a frozen value: it is remembered per query and handed to many callers, and a
variation (another Retry-After) is a `dataclasses.replace`, never a copied exception with
a traceback that would pin the request that first raised it. Each protocol renders it in
its own shape (`proxy.imds`, `proxy.appservice`); the statuses are IMDS's and carry over,
so a transient failure is a 5xx or 429 with Retry-After in every protocol.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from proxy.requestlog import Fields
from proxy.tokens.errors import (
    CredentialUnavailable,
    EntraRejected,
    EntraThrottled,
    EntraUnavailable,
    FederationPending,
    TokenError,
)

MAX_RETRY_AFTER = 60
"""Longest Retry-After sent: azidentity gives up beyond it, MSAL Python goes silent for it."""
TRANSIENT_RETRY_AFTER = 5
"""Retry-After on a transient failure when no better time is known."""
_UNKNOWN_IDENTITY_AADSTS = frozenset(("700016", "70021", "700211", "700212", "700213"))
"""Entra's ways of saying that this pod has no such identity: the app does not exist, or
trusts no federated credential matching the pod's service account."""


@dataclass(frozen=True, slots=True)
class Failure:
    """An answer other than a token: status, a safe description, and when to retry."""

    status: int
    code: str
    """IMDS's error code (`invalid_request`...); protocols without codes ignore it."""
    description: str
    reason: str = ""
    """A short, bounded label for logs and metrics (the failure kind); `code` if empty."""
    retry_after: float | None = None

    @property
    def label(self) -> str:
        return self.reason or self.code

    def retry_after_header(self) -> str | None:
        """Whole seconds, capped: the cache keeps honouring a longer wait on its own."""
        if self.retry_after is None:
            return None
        return str(min(max(1, math.ceil(self.retry_after)), MAX_RETRY_AFTER))

    def log_fields(self) -> Fields:
        """The request line's fields: the kind, and the text for 429 and 5xx (the caller's
        own mistakes are already in the line's path and query)."""
        fields: dict[str, object] = {"error": self.label}
        if self.status >= 500 or self.status == 429:
            fields["reason"] = self.description
        return Fields(fields)


def failure_for(exc: TokenError) -> Failure:
    """What a failure to get a token means for the caller, by its kind."""
    if isinstance(exc, EntraRejected):
        error = "invalid_resource" if exc.aadsts == "500011" else "invalid_request"
        reason = f"rejected_aadsts{exc.aadsts}" if exc.aadsts else "rejected"
        description = exc.description
        if exc.aadsts in _UNKNOWN_IDENTITY_AADSTS:
            description = "Identity not found: " + description  # the phrase SDKs look for
        return Failure(400, error, description, reason)
    if isinstance(exc, EntraThrottled):  # Entra's 429, or the proxy's own new-token limit
        return Failure(429, "too_many_requests", exc.description, exc.kind, exc.retry_after)
    if isinstance(exc, FederationPending):
        # Transient by construction: SDKs retry a 5xx, while a 400 would be final for them.
        return Failure(
            503,
            "temporarily_unavailable",
            exc.description,
            "federation_pending",
            exc.retry_after,
        )
    if isinstance(exc, EntraUnavailable):
        wait = TRANSIENT_RETRY_AFTER if exc.retry_after is None else exc.retry_after
        return Failure(503, "temporarily_unavailable", exc.description, "unavailable", wait)
    if isinstance(exc, CredentialUnavailable):
        return Failure(
            503, "temporarily_unavailable", exc.description, "credential", TRANSIENT_RETRY_AFTER
        )
    return Failure(500, "unknown_error", exc.description, "internal", TRANSIENT_RETRY_AFTER)
