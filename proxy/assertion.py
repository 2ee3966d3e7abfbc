"""The pod's projected service-account token: the client assertion sent to Entra ID.

kubelet rotates the file by swapping a `..data` symlink; `WatchedFile` notices the swap
and reads the new token. The content is decoded only to learn its `exp` (a token past it
is never sent) and the claims that explain a federation rejection.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from proxy.jwtpayload import NotAJwt, unverified_claims
from proxy.tokens.errors import CredentialUnavailable
from proxy.tokens.federation import AssertionClaims
from proxy.watchedfile import WatchedFile

_NO_CLAIMS = AssertionClaims()


@dataclass(frozen=True, slots=True)
class ServiceAccountToken:
    value: str
    expires_at: float | None
    claims: AssertionClaims = _NO_CLAIMS
    """`iss`, `sub` and `aud`, to explain a federation rejection (safe to show)."""

    def __repr__(self) -> str:  # never show the token itself
        return f"ServiceAccountToken(expires_at={self.expires_at})"


ROTATION_RETRIES = 3
"""Reads retried when the file is missing. kubelet rotates by pointing `..data` at a new
directory and then deleting the old one: a read that resolved the old link just before
finds nothing, and the very next read finds the new token."""


class AssertionSource:
    """Reads the federated token file, re-reading only when kubelet replaced it.

    Safe to call from MSAL's worker threads (it is the client-assertion callable).
    """

    def __init__(self, path: str, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._file = WatchedFile(path, self._parse)

    def current(self) -> ServiceAccountToken:
        """The current, unexpired token. Raises `CredentialUnavailable` saying why not."""
        for attempt in range(ROTATION_RETRIES + 1):
            try:
                token = self._file.current()
                break
            except FileNotFoundError:
                if attempt == ROTATION_RETRIES:
                    raise CredentialUnavailable(
                        f"service-account token file {self.path} does not exist"
                    ) from None
            except OSError as exc:
                raise CredentialUnavailable(
                    f"service-account token file {self.path} cannot be read: {exc.strerror}"
                ) from None
        if token.expires_at is not None and token.expires_at <= self._clock():
            raise CredentialUnavailable(
                f"service-account token in {self.path} expired at {token.expires_at:.0f}"
            )
        return token

    def __call__(self) -> str:
        """The assertion itself, as MSAL's `client_assertion` callable wants it."""
        return self.current().value

    def _parse(self, content: bytes) -> ServiceAccountToken:
        try:
            value = content.decode("ascii").strip()
        except UnicodeDecodeError:
            raise CredentialUnavailable(
                f"service-account token file {self.path} cannot be read: it is not ASCII text"
            ) from None
        if not value:
            raise CredentialUnavailable(f"service-account token file {self.path} is empty")
        claims = _claims(value, self.path)
        return ServiceAccountToken(
            value=value, expires_at=_expiry(claims), claims=_federation_claims(claims)
        )


def _claims(token: str, path: str) -> dict[str, object]:
    """The payload, read without verifying (Entra verifies; we only avoid sending junk).

    The signature segment is not read: it is Entra's to judge, and a corrupt one sent on
    comes back named (AADSTS50027) with its fix. Only the path is said, never the token.
    """
    try:
        return unverified_claims(token)
    except NotAJwt:
        raise CredentialUnavailable(f"service-account token in {path} is not a JWT") from None


def _federation_claims(claims: dict[str, object]) -> AssertionClaims:
    aud = claims.get("aud")
    audience = " ".join(map(str, aud)) if isinstance(aud, list) else aud
    found = {"iss": claims.get("iss"), "sub": claims.get("sub"), "aud": audience}
    return AssertionClaims(
        **{name: _clip(value) for name, value in found.items() if isinstance(value, str) and value}
    )


def _clip(value: str, limit: int = 300) -> str:
    """A claim as it may be quoted: printable, bounded."""
    text = "".join(c if c.isprintable() else "?" for c in value)
    return text if len(text) <= limit else text[:limit] + "..."


def _expiry(claims: dict[str, object]) -> float | None:
    exp = claims.get("exp")
    try:
        return float(exp) if isinstance(exp, int | float) else None
    except OverflowError:  # an absurd integer: treat the token as not expiring, Entra judges
        return None
