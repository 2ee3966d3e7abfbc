"""The few ways getting a token can fail.

Failures are typed so that each layer decides by kind, not by parsing text: the cache
chooses its retry policy from the class, and `proxy.failures` alone turns a class into
an HTTP status and a description that each protocol renders. Messages never carry a
token or an assertion.
"""

from __future__ import annotations

from typing import Self


class TokenError(Exception):
    """Base of every failure to produce a token; `description` is safe to show callers.

    A failure is remembered and handed to many callers, so it is never raised twice:
    `again` makes a fresh copy (raising one object repeatedly would chain every raiser's
    frames, and the requests they hold, onto its traceback).
    """

    kind = "error"

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description

    def again(self, retry_after: float | None = None) -> Self:
        """The same failure, new and without a traceback (`retry_after` where it applies)."""
        return type(self)(self.description)


class EntraRejected(TokenError):
    """Entra ID answered 4xx: the request or the identity's configuration is wrong.

    Retrying at once gives the same answer, so the cache remembers it briefly.
    """

    kind = "rejected"

    def __init__(self, error: str, description: str, aadsts: str | None, status: int) -> None:
        super().__init__(description)
        self.error = error
        self.aadsts = aadsts
        self.status = status

    def again(self, retry_after: float | None = None) -> Self:
        return type(self)(self.error, self.description, self.aadsts, self.status)


class FederationRejected(EntraRejected):
    """Entra ID rejected the federated assertion for a known cause (`proxy.tokens.federation`).

    `description` is the explanation with the fix, which `fix` holds alone; `cause` names
    the class, and `propagates` says whether a new federated credential may simply not be
    effective yet.
    """

    kind = "rejected"  # the cause, not the kind, tells federation classes apart

    def __init__(
        self,
        error: str,
        description: str,
        aadsts: str | None,
        status: int,
        cause: str,
        fix: str,
        propagates: bool = False,
    ) -> None:
        super().__init__(error, description, aadsts, status)
        self.cause = cause
        self.fix = fix
        self.propagates = propagates

    def again(self, retry_after: float | None = None) -> Self:
        return type(self)(
            self.error,
            self.description,
            self.aadsts,
            self.status,
            self.cause,
            self.fix,
            self.propagates,
        )


class FederationPending(TokenError):
    """A "no matching federated credential" rejection inside the propagation window:
    transient, so callers are told to retry after `retry_after` seconds."""

    kind = "federation_pending"

    def __init__(
        self, description: str, retry_after: float, cause: str, aadsts: str | None, fix: str
    ) -> None:
        super().__init__(description)
        self.retry_after = retry_after
        self.cause = cause
        self.aadsts = aadsts
        self.fix = fix

    def again(self, retry_after: float | None = None) -> Self:
        return type(self)(
            self.description,
            self.retry_after if retry_after is None else retry_after,
            self.cause,
            self.aadsts,
            self.fix,
        )


class _RetryLater(TokenError):
    """A transient failure that may say when to try again (`retry_after` seconds)."""

    def __init__(self, description: str, retry_after: float | None = None) -> None:
        super().__init__(description)
        self.retry_after = retry_after

    def again(self, retry_after: float | None = None) -> Self:
        return type(self)(
            self.description, self.retry_after if retry_after is None else retry_after
        )


class EntraThrottled(_RetryLater):
    """Entra ID answered 429: no call for this identity before `retry_after` seconds."""

    kind = "throttled"
    retry_after: float

    def __init__(self, description: str, retry_after: float) -> None:
        super().__init__(description, retry_after)


class TooManyNewTokens(EntraThrottled):
    """The proxy's own limit on exchanges for tokens it does not hold yet was reached
    (`proxy.tokens.ratelimit`): Entra ID was not asked; retry after `retry_after` seconds."""

    kind = "rate_limited"


class EntraUnavailable(_RetryLater):
    """Entra ID could not be reached, timed out or answered 5xx: transient, back off."""

    kind = "unavailable"


class CredentialUnavailable(TokenError):
    """The pod's service-account token is missing, empty, malformed or expired.

    Local and cheap to re-check (kubelet may be about to write it), so nothing is
    remembered: the next request looks at the file again.
    """

    kind = "credential"
