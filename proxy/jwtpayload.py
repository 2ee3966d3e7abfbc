"""The claims of a JWT the sidecar reads but does not judge, decoded without PyJWT.

The sidecar reads two kinds of token it never verifies: its own service-account token
(to refuse junk before Entra sees it, and to explain a federation rejection) and Entra's
access tokens (`oid`, `xms_mirid` for the identity selectors). The API server and Entra
verify them. PyJWT's `decode` would do the same here, but importing PyJWT loads
cryptography's native bindings for signature algorithms the sidecar never runs: 9 MiB
more in every pod, idle (`make bench`). The dev issuer, which signs, and the tests use
PyJWT.
"""

from __future__ import annotations

import base64
import binascii
import json


class NotAJwt(ValueError):
    """Not three dot-separated parts with a base64url JSON object in the middle. Carries no
    part of the token: callers say which file or answer it was."""


def unverified_claims(token: str) -> dict[str, object]:
    """The payload's claims; the header and signature are not read."""
    parts = token.split(".")
    if len(parts) != 3:
        raise NotAJwt
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        raise NotAJwt from None
    if not isinstance(claims, dict):
        raise NotAJwt
    return claims
