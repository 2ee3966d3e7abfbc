"""Trusting a real cluster's service-account issuer, as Entra ID does.

With these the local issuer can stand in for Entra ID in front of a real Kubernetes cluster:
it checks the kubelet's projected token against the cluster's own signing keys (its JWKS,
``/openid/v1/jwks``, given as a file or a URL) and against a list of federated credentials
(issuer, subject, audience), instead of the key and token it generates itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.devissuer.state import FederatedCredential
from proxy.wellknown import TOKEN_EXCHANGE_AUDIENCE

log = logging.getLogger("proxy.devissuer.trust")
REFRESH_SECONDS = 60.0
"""How often an external JWKS is read again, so the cluster's key rotation is followed."""
FETCH_TIMEOUT = 5.0


class TrustError(ValueError):
    """A JWKS or a federated credential spec that cannot be used; the message says why."""


def parse_jwks(text: str, source: str) -> dict[str, rsa.RSAPublicKey]:
    """The RSA signature keys of a JWKS document, by ``kid``."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise TrustError(f"{source}: not JSON: {e}") from None
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list):
        raise TrustError(f"{source}: not a JWKS (no 'keys' list)")
    found: dict[str, rsa.RSAPublicKey] = {}
    for jwk in keys:
        if not isinstance(jwk, dict) or jwk.get("kty") != "RSA" or jwk.get("use", "sig") != "sig":
            continue
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid:
            continue
        try:
            key = jwt.algorithms.RSAAlgorithm.from_jwk(jwk)
        except (jwt.PyJWTError, ValueError, KeyError) as e:
            raise TrustError(f"{source}: key {kid!r} is not a usable RSA key: {e}") from None
        if isinstance(key, rsa.RSAPublicKey):
            found[kid] = key
    if not found:
        raise TrustError(f"{source}: no RSA signature key with a 'kid'")
    return found


@dataclass
class JwksSource:
    """An external issuer's keys, from a file or an http(s) URL, read again periodically."""

    location: str
    keys: dict[str, rsa.RSAPublicKey] = field(default_factory=dict)

    @property
    def is_url(self) -> bool:
        return self.location.startswith(("http://", "https://"))

    def read(self) -> dict[str, rsa.RSAPublicKey]:
        """Read the keys now (blocking: run it in a thread from the event loop)."""
        if self.is_url:
            try:
                with urllib.request.urlopen(self.location, timeout=FETCH_TIMEOUT) as response:
                    text = response.read().decode()
            except OSError as e:
                raise TrustError(f"{self.location}: cannot fetch: {e}") from None
        else:
            try:
                text = Path(self.location).read_text()
            except OSError as e:
                raise TrustError(f"{self.location}: cannot read: {e}") from None
        self.keys = parse_jwks(text, self.location)
        return self.keys

    async def follow(self, into: dict[str, rsa.RSAPublicKey]) -> None:
        """Keep ``into`` equal to the source's keys; a failed read keeps the previous ones."""
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            try:
                keys = await asyncio.to_thread(self.read)
            except TrustError as e:
                log.warning("keeping the previous trusted keys: %s", e)
                continue
            if keys.keys() != into.keys():
                log.info("trusted keys now: %s", ", ".join(sorted(keys)))
            into.clear()
            into.update(keys)


def parse_credential(spec: str) -> FederatedCredential:
    """``issuer=URL,subject=SUB[,audience=AUD]`` (audience repeatable; default Entra's)."""
    issuer = subject = None
    audiences: list[str] = []
    for part in spec.split(","):
        name, sep, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not value:
            raise TrustError(f"{spec!r}: expected name=value, got {part!r}")
        if name == "issuer":
            issuer = value
        elif name == "subject":
            subject = value
        elif name == "audience":
            audiences.append(value)
        else:
            raise TrustError(f"{spec!r}: unknown field {name!r} (issuer, subject, audience)")
    if not issuer or not subject:
        raise TrustError(f"{spec!r}: needs issuer= and subject=")
    return FederatedCredential(
        issuer=issuer, subject=subject, audiences=tuple(audiences or [TOKEN_EXCHANGE_AUDIENCE])
    )
