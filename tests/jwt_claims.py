"""Read a JWT's claims without verifying it: tests check what the fake issued."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
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
