"""Read a JWT's claims without verifying it (tests check what the fake issued), and make
unsigned ones for what the proxy only reads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jwt


def unsigned(claims: Mapping[str, Any]) -> str:
    """A JWT with `claims` and alg `none`: enough for what reads claims unverified."""
    return jwt.encode(dict(claims), "", algorithm="none")


def claims(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


def assert_issued_to(
    token: str,
    *,
    tenant_id: str,
    audience: str,
    client_id: str,
    expires_on: float | None = None,
) -> dict[str, Any]:
    """The token is the fake Entra ID's for that tenant, audience and client; and when the
    client reports the expiry it computed, that expiry is the token's own `exp` (±2 s)."""
    got = claims(token)
    assert (got["aud"], got["appid"], got["tid"]) == (audience, client_id, tenant_id), got
    if expires_on is not None:
        assert abs(expires_on - got["exp"]) <= 2, (expires_on, got["exp"])
    return got


def assert_client_result(
    result: Mapping[str, object], *, tenant_id: str, audience: str, client_id: str
) -> dict[str, Any]:
    """A client program's report (`token`, `expires_on`): no error, the fake's token for that
    audience and client, and the expiry the client computed is the token's own."""
    assert "error" not in result, result
    return assert_issued_to(
        str(result["token"]),
        tenant_id=tenant_id,
        audience=audience,
        client_id=client_id,
        expires_on=float(str(result["expires_on"])),
    )
