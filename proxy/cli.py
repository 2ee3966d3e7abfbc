"""`imds-proxy`: the sidecar's command line, drop-in for the upstream image's arguments.

Exit codes: 0 normal stop or probe success, 1 probe failure, 2 bad configuration
(one line naming the setting, no traceback).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

from proxy import config

PROBE_WINDOW = 7.0
"""How long `--probe` waits for readiness: the upstream hook's 7 tries, 1 s apart."""
PROBE_INTERVAL = 0.2
"""Between tries: the app (or the next container) starts this soon after the proxy is ready."""
PROBE_TIMEOUT = 1.0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["doctor"]:
        from proxy.doctor import main as doctor

        return doctor(args[1:])
    if args[:1] == ["dev"]:
        from proxy.devmode import run_dev

        return int(run_dev(args[1:]))
    if args[:1] == ["inject"]:
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


def run(settings: config.Settings) -> int:
    # After config: a bad setting fails before heavy imports. Here, not at the top: the
    # kubelet runs `--probe` every second while a native sidecar starts, and asyncio and
    # structlog would double what that costs on a busy node.
    from proxy import eventloop, logs
    from proxy.server import serve

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


def probe(port: int, window: float = PROBE_WINDOW, interval: float = PROBE_INTERVAL) -> int:
    """The postStart hook and the native sidecar's probes: wait until /readyz answers 200.

    Polled every `interval` for up to `window` seconds: the kubelet starts the app when this
    returns, so a 1 s poll delayed every app's start by up to a second.
    """
    import urllib.error  # here: the server itself never needs urllib's client
    import urllib.request

    url = f"http://127.0.0.1:{port}/readyz"
    deadline = time.monotonic() + window
    tries = 0
    while True:
        tries += 1
        remaining = deadline - time.monotonic()
        try:
            timeout = max(min(PROBE_TIMEOUT, remaining), 0.05)
            with urllib.request.urlopen(url, timeout=timeout) as response:
                if response.status == 200:
                    return 0
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() + interval >= deadline:
            break
        time.sleep(interval)
    print(f"imds-proxy: not ready at {url} after {window:g}s ({tries} tries)", file=sys.stderr)
    return 1
