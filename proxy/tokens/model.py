"""What the cache stores: an access token and the times that govern serving it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class TokenKey(NamedTuple):
    """One cache slot: the identity (tenant, client) and what the token is for (scope)."""

    tenant_id: str
    client_id: str
    scope: str


@dataclass(frozen=True, slots=True, eq=False)
class AccessToken:
    """A token Entra issued, with absolute Unix times."""

    value: str
    token_type: str
    expires_on: float
    ext_expires_on: float
    not_before: float
    obtained_at: float

    @property
    def lifetime(self) -> float:
        return self.expires_on - self.obtained_at

    def __repr__(self) -> str:  # never show the token itself
        return f"AccessToken(expires_on={self.expires_on:.0f}, token_type={self.token_type})"
