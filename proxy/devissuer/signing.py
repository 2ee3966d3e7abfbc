"""RSA signing keys and RS256 JWTs with a ``kid``, as Entra ID and Kubernetes issue them.

One key class serves both sides of the exchange: the cluster's service-account key that
signs projected tokens, and the issuer key that signs access tokens. Keys live only in
memory for the lifetime of the process.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ALGORITHM = "RS256"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class SigningKey:
    """A 2048-bit RSA key whose ``kid`` is a thumbprint of its public key."""

    private_key: rsa.RSAPrivateKey = field(repr=False)
    kid: str

    @classmethod
    def generate(cls) -> SigningKey:
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        der = private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return cls(private_key=private_key, kid=_b64url(hashlib.sha256(der).digest()[:20]))

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self.private_key.public_key()

    def sign(self, claims: Mapping[str, Any], *, x5t: bool = False) -> str:
        """Encode ``claims`` as an RS256 JWT; ``x5t`` mirrors ``kid`` as Entra's tokens do."""
        headers: dict[str, Any] = {"kid": self.kid}
        if x5t:
            headers["x5t"] = self.kid
        return jwt.encode(dict(claims), self.private_key, algorithm=ALGORITHM, headers=headers)

    def jwk(self) -> dict[str, Any]:
        """The public half as a JWK with ``kid``, ``use`` and ``alg``."""
        numbers = self.public_key.public_numbers()
        n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
        e = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
        return {
            "kty": "RSA",
            "use": "sig",
            "alg": ALGORITHM,
            "kid": self.kid,
            "x5t": self.kid,
            "n": _b64url(n),
            "e": _b64url(e),
        }

    def jwks(self) -> dict[str, Any]:
        """A JWKS document holding this key."""
        return {"keys": [self.jwk()]}
