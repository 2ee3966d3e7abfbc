"""The doctor's command line and output: one ✔/✘ line per check, the fix under each ✘.

Exit codes: 0 every check passed, 1 one failed, 2 bad usage (argparse's own).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence

from proxy import cliparse, config
from proxy.doctor.checks import (
    Check,
    check_authority,
    check_exchange,
    check_running_proxy,
    check_service_account,
    check_settings,
)
from proxy.logs import redact_text

DEFAULT_RESOURCE = "https://management.azure.com/"
_MARK = {True: "✔", False: "✘", None: "-"}


def build_parser() -> argparse.ArgumentParser:
    parser = cliparse.Parser(
        prog="imds-proxy doctor",
        description="Check the pod's Workload ID setup, in order, and print how to fix it.",
    )
    parser.add_argument(
        "--resource", default=DEFAULT_RESOURCE, help="resource for the test exchange (%(default)s)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--proxy-port",
        type=int,
        default=config.DEFAULT_PROXY_PORT,
        help="the running proxy's token port, where GET /status answers (%(default)s)",
    )
    parser.add_argument("--host", default=config.DEFAULT_HOST, help="its address (%(default)s)")
    return parser


def run_checks(args: argparse.Namespace, environ: Mapping[str, str]) -> list[Check]:
    settings_check, settings = check_settings(environ)
    checks = [settings_check]
    if settings is None:
        checks += [
            Check(name, None, "skipped: the settings are incomplete")
            for name in ("service-account token", "authority", "exchange")
        ]
    else:
        token_check, token = check_service_account(settings)
        authority_check = check_authority(settings)
        checks += [token_check, authority_check]
        if token is None or not authority_check.ok:
            checks.append(Check("exchange", None, "skipped: needs the checks above"))
        else:
            checks.append(check_exchange(settings, args.resource))
    checks.append(check_running_proxy(args.host, args.proxy_port))
    return checks


def render(checks: Sequence[Check]) -> str:
    lines = []
    for check in checks:
        lines.append(f"{_MARK[check.ok]} {check.name}: {check.detail}")
        if check.ok is False and check.fix:
            lines.append(f"  fix: {check.fix}")
    passed = sum(1 for c in checks if c.ok)
    lines.append(f"{passed} of {len(checks)} checks passed")
    return "\n".join(lines)


def main(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(list(argv))
    checks = run_checks(args, os.environ if environ is None else environ)
    ok = all(c.ok for c in checks)
    if args.json:
        text = json.dumps({"ok": ok, "checks": [c.to_json() for c in checks]}, indent=2)
    else:
        text = render(checks)
    # UTF-8 whatever the locale: the image may have none, and the marks are not ASCII.
    sys.stdout.buffer.write(redact_text(text).encode() + b"\n")
    sys.stdout.flush()
    return 0 if ok else 1
