"""`imds-proxy`: the sidecar's command line, drop-in for the upstream image's arguments.

Exit codes: 0 normal stop or probe success, 1 probe failure, 2 bad configuration
(one line naming the setting, no traceback) or a subcommand this install does not have.

The sidecar image installs the sidecar, doctor and report only; `dev` (the dev issuer) and
`inject` are parts of the development install (pyproject.toml's extras and image table), so
where their package is missing the subcommand says so in one line and exits 2.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Sequence

from proxy import config, eventloop, logs

PROBE_TRIES = 7
PROBE_INTERVAL = 1.0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["doctor"]:
        from proxy.doctor import main as doctor

        return doctor(args[1:])
    if args[:1] == ["dev"]:
        if not installed("dev", "proxy.devissuer.server", extra="dev"):
            return 2
        from proxy.devmode import run_dev

        return int(run_dev(args[1:]))
    if args[:1] == ["inject"]:
        if not installed("inject", "proxy.inject.cli", extra="inject"):
            return 2
        from proxy.inject.cli import main as run_inject

        return run_inject(args[1:])
    if args[:1] == ["report"]:
        from proxy.report import main as report

        return report(args[1:])
    parsed = config.build_parser().parse_args(args)
    if parsed.probe:
        return probe(parsed.proxy_port)
    try:
        settings = config.load(parsed, os.environ)
    except config.ConfigError as exc:
        print(f"imds-proxy: configuration error: {exc}", file=sys.stderr)
        return 2
    return run(settings)


def installed(command: str, module: str, extra: str) -> bool:
    """Whether ``module`` (a subcommand's entry) and all it imports are installed here.

    When not, one line on stderr names the subcommand and what is missing; the caller exits 2.
    """
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        print(
            f"imds-proxy {command}: not installed here ({exc.name} is missing); it is part of"
            f" the development install (from a checkout: pip install '.[{extra}]')",
            file=sys.stderr,
        )
        return False
    return True


def run(settings: config.Settings) -> int:
    from proxy.server import serve  # after config: a bad setting fails before heavy imports

    logs.configure(settings.log_level, settings.log_format)
    try:
        runner = eventloop.runner(settings.event_loop)
    except eventloop.EventLoopUnavailable as exc:
        print(f"imds-proxy: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        with runner:
            runner.run(serve(settings))
    except OSError as exc:  # e.g. the port is taken
        logs.get_logger("proxy.server").error("cannot start the proxy server", reason=str(exc))
        return 1
    return 0


def probe(port: int, tries: int = PROBE_TRIES, interval: float = PROBE_INTERVAL) -> int:
    """The upstream postStart hook: wait until /readyz answers 200."""
    import urllib.error  # here: the server itself never needs urllib's client
    import urllib.request

    url = f"http://127.0.0.1:{port}/readyz"
    for attempt in range(tries):
        try:
            with urllib.request.urlopen(url, timeout=interval) as response:
                if response.status == 200:
                    return 0
        except (urllib.error.URLError, OSError):
            pass
        if attempt + 1 < tries:
            time.sleep(interval)
    print(f"imds-proxy: not ready at {url} after {tries} tries", file=sys.stderr)
    return 1
