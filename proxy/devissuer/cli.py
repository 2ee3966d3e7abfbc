"""Command line of the standalone issuer.

Prints exactly one JSON line on stdout once it is serving (the contract a parent process
waits for), logs only to stderr, and exits 0 on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from proxy.devissuer.satoken import DEFAULT_LIFETIME, DEFAULT_SUBJECT
from proxy.devissuer.server import (
    DEFAULT_CLIENT_ID,
    DEFAULT_TENANT_ID,
    LocalIssuer,
    issuer_json_line,
)
from proxy.devissuer.state import DEFAULT_TOKEN_LIFETIME, FederatedCredential
from proxy.devissuer.trust import TrustError, parse_credential
from proxy.wellknown import TOKEN_EXCHANGE_AUDIENCE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m proxy.devissuer",
        description="A local, fake Microsoft Entra ID over TLS for demos and tests.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one")
    parser.add_argument("--workdir", type=Path, required=True, help="where PKI and tokens go")
    parser.add_argument(
        "--advertise-host",
        help="address clients use in URLs (default: --host, or 127.0.0.1 for a wildcard)",
    )
    parser.add_argument(
        "--san-ip", action="append", default=[], help="extra IP for the certificate (repeatable)"
    )
    parser.add_argument("--tenant-id", default=DEFAULT_TENANT_ID)
    parser.add_argument("--client-id", default=DEFAULT_CLIENT_ID)
    parser.add_argument(
        "--extra-client-id",
        action="append",
        default=[],
        help="another app registration with the same federated credential (repeatable)",
    )
    parser.add_argument(
        "--token-lifetime",
        type=int,
        default=DEFAULT_TOKEN_LIFETIME,
        help="access token lifetime in seconds (default %(default)s)",
    )
    parser.add_argument(
        "--sa-token-lifetime",
        type=float,
        default=DEFAULT_LIFETIME,
        help="projected service-account token lifetime in seconds (default %(default)s)",
    )
    parser.add_argument("--subject", default=DEFAULT_SUBJECT, help="service-account subject")
    parser.add_argument(
        "--no-auto-rotate",
        action="store_true",
        help="do not rotate the service-account token at 80%% of its lifetime",
    )
    parser.add_argument("--access-log", action="store_true", help="log each request to stderr")
    parser.add_argument(
        "--trust-jwks",
        metavar="FILE|URL",
        help="also accept assertions signed by this issuer's keys: a real cluster's JWKS "
        "(kubectl get --raw /openid/v1/jwks), read again every minute",
    )
    parser.add_argument(
        "--federated-credential",
        action="append",
        default=[],
        type=_credential,
        metavar="issuer=URL,subject=SUB[,audience=AUD]",
        help="a federated credential of every client id, instead of the one matching the "
        f"generated token (repeatable; audience defaults to {TOKEN_EXCHANGE_AUDIENCE})",
    )
    return parser


def _credential(spec: str) -> FederatedCredential:
    try:
        return parse_credential(spec)
    except TrustError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


async def serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with LocalIssuer.start(
        args.workdir,
        host=args.host,
        port=args.port,
        advertise_host=args.advertise_host,
        tenant_id=args.tenant_id,
        client_id=args.client_id,
        extra_client_ids=args.extra_client_id,
        token_lifetime=args.token_lifetime,
        sa_token_lifetime=args.sa_token_lifetime,
        subject=args.subject,
        auto_rotate=not args.no_auto_rotate,
        san_ips=args.san_ip,
        access_log=args.access_log,
        trust_jwks=args.trust_jwks,
        credentials=args.federated_credential,
    ) as issuer:
        if args.trust_jwks:
            logging.info("trusting the keys at %s", args.trust_jwks)
        for c in args.federated_credential:
            logging.info(
                "federated credential: issuer=%s subject=%s audiences=%s",
                c.issuer,
                c.subject,
                ",".join(c.audiences),
            )
        sys.stdout.write(issuer_json_line(issuer) + "\n")
        sys.stdout.flush()
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.token_lifetime <= 0 or args.sa_token_lifetime <= 0:
        print("lifetimes must be positive", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    try:
        asyncio.run(serve(args))
    except TrustError as e:
        print(f"cannot trust the external issuer: {e}", file=sys.stderr)
        return 2
    return 0
