"""The few ways getting a token can fail.

Failures are typed so that each layer decides by kind, not by parsing text: the cache
chooses its retry policy from the class, and `proxy.failures` alone turns a class into
an HTTP status and a description that each protocol renders. Messages never carry a
token or an assertion.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Self


class TokenError(Exception):
    """Base of every failure to produce a token; `description` is safe to show callers.

    A failure is remembered and handed to many callers, so it is never raised twice:
    `again` makes a fresh copy (raising one object repeatedly would chain every raiser's
    frames, and the requests they hold, onto its traceback). Each kind is a dataclass of
    what it says, so the copy is a `dataclasses.replace`, not a constructor call by hand.
    """

    kind = "error"

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description

    def __post_init__(self) -> None:  # the kinds' dataclass __init__ ends here
        Exception.__init__(self, self.description)  # str(error) is the description

    def again(self, retry_after: float | None = None) -> Self:
        """The same failure, new and without a traceback (`retry_after` where it applies)."""
        if not dataclasses.is_dataclass(self):
            return type(self)(self.description)
        changes: dict[str, Any] = {}
        if retry_after is not None and hasattr(self, "retry_after"):
            changes["retry_after"] = retry_after
        copy: Self = dataclasses.replace(self, **changes)
        return copy


@dataclasses.dataclass(eq=False)
class EntraRejected(TokenError):
    """Entra ID answered 4xx: the request or the identity's configuration is wrong.

    Retrying at once gives the same answer, so the cache remembers it briefly.
    """

    error: str
    description: str
    aadsts: str | None
    status: int
    kind = "rejected"


@dataclasses.dataclass(eq=False)
class FederationRejected(EntraRejected):
    """Entra ID rejected the federated assertion for a known cause (`proxy.tokens.federation`).

    `description` is the explanation with the fix, which `fix` holds alone; `cause` names
    the class, and `propagates` says whether a new federated credential may simply not be
    effective yet.
    """

    cause: str
    fix: str
    propagates: bool = False
    kind = "rejected"  # the cause, not the kind, tells federation classes apart


@dataclasses.dataclass(eq=False)
class FederationPending(TokenError):
    """A "no matching federated credential" rejection inside the propagation window:
    transient, so callers are told to retry after `retry_after` seconds."""

    description: str
    retry_after: float
    cause: str
    aadsts: str | None
    fix: str
    kind = "federation_pending"


@dataclasses.dataclass(eq=False)
class _RetryLater(TokenError):
    """A transient failure that may say when to try again (`retry_after` seconds)."""

    description: str
    retry_after: float | None = None


@dataclasses.dataclass(eq=False)
class EntraThrottled(_RetryLater):
    """Entra ID answered 429: no call for this identity before `retry_after` seconds."""

    retry_after: float
    kind = "throttled"


class TooManyNewTokens(EntraThrottled):
    """The proxy's own limit on exchanges for tokens it does not hold yet was reached
    (`proxy.tokens.ratelimit`): Entra ID was not asked; retry after `retry_after` seconds."""

    kind = "rate_limited"


class EntraUnavailable(_RetryLater):
    """Entra ID could not be reached, timed out or answered 5xx: transient, back off."""

    kind = "unavailable"


@dataclasses.dataclass(eq=False)
class CredentialUnavailable(TokenError):
    """The pod's service-account token is missing, empty, malformed or expired.

    Local and cheap to re-check (kubelet may be about to write it), so nothing is
    remembered: the next request looks at the file again.
    """

    description: str
    kind = "credential"
