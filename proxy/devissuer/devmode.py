"""`imds-proxy dev`: the proxy plus a local stand-in for Entra ID, for trying it anywhere.

The local issuer (`proxy.devissuer`) serves TLS with a throwaway CA and writes a
kubelet-style projected token; the proxy is configured from it exactly as the webhook
would configure it in a pod, so the same MSAL code path runs as in production.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from proxy import config, eventloop, logs
from proxy.devissuer.server import LocalIssuer

DEMO_RESOURCE = "https://management.azure.com/"


def run_dev(argv: Sequence[str]) -> int:
    parser = config.build_parser()
    parser.prog = "imds-proxy dev"
    parser.add_argument(
        "--issuer-port",
        type=int,
        default=0,
        help="port of the local issuer (default: any free port)",
    )
    parsed = parser.parse_args(argv)
    logs.configure(
        parsed.log_level if parsed.log_level in config.LOG_LEVELS else "info", parsed.log_format
    )
    try:
        runner = eventloop.runner(parsed.event_loop)  # the loop the sidecar would run on
    except eventloop.EventLoopUnavailable as exc:
        print(f"imds-proxy dev: configuration error: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="imds-proxy-dev-") as workdir, runner:
        try:
            runner.run(_serve_with_issuer(parsed, Path(workdir)))
        except config.ConfigError as exc:
            print(f"imds-proxy dev: configuration error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"imds-proxy dev: cannot start: {exc}", file=sys.stderr)
            return 1
    return 0


async def _serve_with_issuer(parsed: argparse.Namespace, workdir: Path) -> None:
    from proxy.server import serve

    async with LocalIssuer.start(workdir, port=parsed.issuer_port) as issuer:
        # The issuer is local: never send its traffic through a configured HTTP proxy.
        no_proxy = ",".join(filter(None, (os.environ.get("NO_PROXY"), "127.0.0.1,localhost")))
        os.environ["NO_PROXY"] = os.environ["no_proxy"] = no_proxy
        settings = config.load(parsed, {**os.environ, **issuer.proxy_environment()})
        _print_banner(settings, issuer.control_url)
        await serve(settings)


def _print_banner(settings: config.Settings, control_url: str) -> None:
    base = f"http://{settings.host}:{settings.port}"
    print(
        "\nimds-proxy dev: serving IMDS tokens from a local issuer (no Azure account needed).\n"
        f"  fetch a token:   curl -s -H 'Metadata: true' "
        f"'{base}/metadata/identity/oauth2/token?api-version=2018-02-01&resource={DEMO_RESOURCE}'\n"
        + (
            f'  App Service:     curl -s -H "X-IDENTITY-HEADER: $IDENTITY_HEADER" '
            f"'{base}/msi/token?api-version=2019-08-01&resource={DEMO_RESOURCE}'\n"
            if settings.identity_header
            else ""
        )
        + f"  readiness:       curl -s {base}/readyz\n"
        + (
            f"  metrics:         curl -s http://127.0.0.1:{settings.metrics_port}/metrics\n"
            if settings.metrics_port
            else ""
        )
        + f"  issuer control:  {control_url}/stats (behaviour: POST {control_url}/behaviour)\n"
        "  stop with Ctrl-C\n",
        file=sys.stderr,
        flush=True,
    )
