"""Run the local issuer: PKI, keys, projected token, app registrations, TLS listener.

:meth:`LocalIssuer.start` is the one way in, used both in-process by ``imds-proxy dev`` and
by ``python -m proxy.devissuer`` for tests, so both exercise the same setup.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import secrets
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy.devissuer.app import create_app
from proxy.devissuer.pki import generate_tls_files
from proxy.devissuer.satoken import (
    DEFAULT_FILENAME,
    DEFAULT_LIFETIME,
    DEFAULT_SUBJECT,
    ServiceAccountTokenSource,
)
from proxy.devissuer.signing import SigningKey
from proxy.devissuer.state import DEFAULT_TOKEN_LIFETIME, FederatedCredential, IssuerState
from proxy.devissuer.trust import JwksSource
from proxy.wellknown import TOKEN_EXCHANGE_AUDIENCE

DEFAULT_TENANT_ID = "9b6e1c1a-0d3e-4c5f-8a7b-1d2e3f4a5b6c"
"""Tenant id of the local issuer unless another is given; not a real Entra tenant."""
DEFAULT_CLIENT_ID = "5f0c7d2e-8b1a-4e6f-9c3d-2a7b8c9d0e1f"
"""Client id of the workload's app registration unless another is given."""
SA_ISSUER_HOST = "https://oidc.local.test"
"""The fake cluster's OIDC issuer; a random path per run keeps runs distinguishable."""
TOKENS_DIRNAME = "tokens"
PKI_DIRNAME = "pki"


@dataclass(frozen=True)
class LocalIssuer:
    """Where a running local issuer is and what a proxy needs to use it."""

    authority_host: str
    tenant_id: str
    client_id: str
    extra_client_ids: tuple[str, ...]
    token_file: str
    ca_bundle: str
    control_url: str
    service_account_issuer: str
    service_account_subject: str
    audience: str = TOKEN_EXCHANGE_AUDIENCE
    port: int = field(default=0, compare=False)

    def proxy_environment(self) -> dict[str, str]:
        """The environment the AKS webhook would inject, plus trust for the throwaway CA."""
        return {
            "AZURE_AUTHORITY_HOST": self.authority_host,
            "AZURE_TENANT_ID": self.tenant_id,
            "AZURE_CLIENT_ID": self.client_id,
            "AZURE_FEDERATED_TOKEN_FILE": self.token_file,
            "REQUESTS_CA_BUNDLE": self.ca_bundle,
        }

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["extra_client_ids"] = list(self.extra_client_ids)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LocalIssuer:
        values = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        values["extra_client_ids"] = tuple(values.get("extra_client_ids", ()))
        return cls(**values)

    @classmethod
    @contextlib.asynccontextmanager
    async def start(
        cls,
        workdir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        advertise_host: str | None = None,
        tenant_id: str = DEFAULT_TENANT_ID,
        client_id: str = DEFAULT_CLIENT_ID,
        extra_client_ids: Sequence[str] = (),
        token_lifetime: int = DEFAULT_TOKEN_LIFETIME,
        sa_token_lifetime: float = DEFAULT_LIFETIME,
        subject: str = DEFAULT_SUBJECT,
        auto_rotate: bool = True,
        san_ips: Sequence[str] = (),
        access_log: bool = False,
        trust_jwks: str | None = None,
        credentials: Sequence[FederatedCredential] = (),
    ) -> AsyncIterator[LocalIssuer]:
        """Serve until the block exits; yields the issuer's coordinates.

        ``advertise_host`` is the address clients use (default: ``host``, or 127.0.0.1
        when binding a wildcard); it and ``san_ips`` go into the certificate.
        ``trust_jwks`` (a JWKS file or URL) adds a real cluster's signing keys to the one
        generated here; ``credentials``, when given, are every app registration's federated
        credentials instead of the one matching the generated token.
        """
        jwks = JwksSource(trust_jwks) if trust_jwks else None
        trusted = await asyncio.to_thread(jwks.read) if jwks else {}
        advertised = advertise_host or _advertised(host)
        sans = [*san_ips, *(h for h in (host, advertised) if _is_ip(h))]
        names = [h for h in (host, advertised) if not _is_ip(h)]
        tls = await asyncio.to_thread(
            generate_tls_files, workdir / PKI_DIRNAME, names, _specific(sans)
        )
        signing_key, sa_key = await asyncio.gather(
            asyncio.to_thread(SigningKey.generate), asyncio.to_thread(SigningKey.generate)
        )

        sa_issuer = f"{SA_ISSUER_HOST}/{secrets.token_hex(8)}"
        tokens = ServiceAccountTokenSource(
            key=sa_key,
            issuer_url=sa_issuer,
            directory=workdir / TOKENS_DIRNAME,
            filename=DEFAULT_FILENAME,
            subject=subject,
            lifetime=sa_token_lifetime,
        )
        token_path = tokens.rotate()
        credential = tuple(credentials) or (FederatedCredential(issuer=sa_issuer, subject=subject),)
        state = IssuerState(
            tenant_id=tenant_id,
            signing_key=signing_key,
            service_account_keys={sa_key.kid: sa_key},
            federated_credentials={c: credential for c in (client_id, *extra_client_ids)},
            default_token_lifetime=token_lifetime,
            sa_tokens=tokens,
            trusted_keys=dict(trusted),
        )

        sock = _bind(host, port)
        runner = (
            web.AppRunner(create_app(state))
            if access_log
            else web.AppRunner(create_app(state), access_log=None)
        )
        await runner.setup()
        rotator: asyncio.Task[None] | None = None
        follower: asyncio.Task[None] | None = None
        try:
            await web.SockSite(runner, sock, ssl_context=tls.server_context()).start()
            bound_port = sock.getsockname()[1]
            base = f"https://{_url_host(advertised)}:{bound_port}"
            issuer = cls(
                authority_host=f"{base}/",
                tenant_id=tenant_id,
                client_id=client_id,
                extra_client_ids=tuple(extra_client_ids),
                token_file=str(token_path),
                ca_bundle=str(tls.ca_bundle),
                control_url=f"{base}/_control",
                service_account_issuer=sa_issuer,
                service_account_subject=subject,
                port=bound_port,
            )
            state.info.update(issuer.to_json())
            if auto_rotate:
                rotator = asyncio.create_task(tokens.auto_rotate(), name="sa-token-rotation")
            if jwks is not None:
                follower = asyncio.create_task(jwks.follow(state.trusted_keys), name="jwks")
            yield issuer
        finally:
            if follower is not None:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
            if rotator is not None:
                rotator.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await rotator
            await runner.cleanup()
            sock.close()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _specific(ips: Sequence[str]) -> list[str]:
    """Drop wildcard addresses, which have no place in a certificate."""
    return [ip for ip in dict.fromkeys(ips) if not ipaddress.ip_address(ip).is_unspecified]


def _advertised(host: str) -> str:
    if _is_ip(host) and ipaddress.ip_address(host).is_unspecified:
        return "127.0.0.1" if ipaddress.ip_address(host).version == 4 else "::1"
    return host


def _url_host(host: str) -> str:
    return f"[{host}]" if _is_ip(host) and ipaddress.ip_address(host).version == 6 else host


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket bound before the site starts, so ``port=0`` is known at once."""
    family = socket.AF_INET6 if _is_ip(host) and ipaddress.ip_address(host).version == 6 else 0
    if family == 0:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    return socket.create_server((host, port), family=family, backlog=1024, reuse_port=False)


def issuer_json_line(issuer: LocalIssuer) -> str:
    """The single stdout line ``python -m proxy.devissuer`` prints once it is serving."""
    return json.dumps(issuer.to_json(), separators=(",", ":"))
