"""`imds-proxy`: the sidecar's command line, drop-in for the upstream image's arguments.

Without a command it runs the sidecar with the upstream flags (`--proxy-port`,
`--log-level`, `--probe`): that is the container's entrypoint. The commands are a table of
name, one line of help and where their `main(argv)` lives; each owns its parser (and its
`--help`) and is imported only when named, so the sidecar's start pays for none of them.

The sidecar image installs the sidecar, doctor and report only; `dev` (the dev issuer),
`inject` and `webhook` are parts of other installs (pyproject.toml's extras and image
table), so where their package is missing the command says so in one line and exits 2. The
tools image has `inject` and `webhook` but not the sidecar: there a run says so the same way.

Exit codes: 0 normal stop or probe success, 1 probe failure, 2 bad configuration or
arguments (one line naming the setting, no traceback) or a command this install lacks.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import time
from collections.abc import Callable, Sequence

from proxy import config

PROBE_WINDOW = 7.0
"""How long `--probe` waits for readiness: the upstream hook's 7 tries, 1 s apart."""
PROBE_INTERVAL = 0.2
"""Between tries: the app (or the next container) starts this soon after the proxy is ready."""
PROBE_TIMEOUT = 1.0

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("proxy.cli:run_sidecar", "the sidecar (the default: `imds-proxy [options]`)"),
    "dev": (
        "proxy.devissuer.devmode:run_dev",
        "the sidecar against a local Entra ID stand-in, to try",
    ),
    "doctor": ("proxy.doctor:main", "check this pod's Workload ID setup, say how to fix it"),
    "report": ("proxy.report:main", "which SDKs still call IMDS; when the sidecar can go"),
    "inject": ("proxy.inject.cli:main", "add the sidecar to Kubernetes manifests"),
    "webhook": ("proxy.webhook.cli:main", "the admission webhook that adds it to pods"),
}


EXTRAS = {"dev": "dev", "inject": "inject", "webhook": "tools"}
"""The pyproject extra each optional command comes with."""


def build_parser() -> argparse.ArgumentParser:
    """The sidecar's flags (config owns them) with the commands listed after them."""
    parser = config.build_parser()
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (_, line) in COMMANDS.items():
        # Everything after the name goes to the command's own parser, --help included.
        sub = commands.add_parser(name, help=line, add_help=False, prefix_chars="\0")
        sub.add_argument("argv", nargs=argparse.REMAINDER)
    groups = parser._action_groups  # the commands first in --help, the sidecar's flags after
    groups.insert(0, groups.pop())
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parsed = build_parser().parse_args(args)
    if parsed.command is not None:
        return int(_command(parsed.command)(parsed.argv))
    return sidecar(parsed)


def _command(name: str) -> Callable[[list[str]], int]:
    module, _, function = COMMANDS[name][0].partition(":")
    try:
        found: Callable[[list[str]], int] = getattr(importlib.import_module(module), function)
    except ModuleNotFoundError as exc:
        not_installed(name, exc.name)
        return lambda _argv: 2
    return found


def not_installed(name: str, missing: str | None) -> None:
    """The one line for a command whose modules this install (an image) does not have."""
    extra = EXTRAS.get(name)
    where = f"'.[{extra}]'" if extra else "."
    print(
        f"imds-proxy {name}: not installed here ({missing} is missing); it is part of"
        f" another install (from a checkout: pip install {where})",
        file=sys.stderr,
    )


def run_sidecar(argv: Sequence[str]) -> int:
    parser = config.build_parser()
    parser.prog = "imds-proxy run"
    return sidecar(parser.parse_args(list(argv)))


def sidecar(parsed: argparse.Namespace) -> int:
    if parsed.probe:
        return probe(parsed.proxy_port)
    if importlib.util.find_spec("proxy.server") is None:  # the tools image: no sidecar
        not_installed("run", "proxy.server")
        return 2
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
