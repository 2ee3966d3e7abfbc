"""Read the running proxy's `GET /report` (its pod-local token listener) and print it for people.

Per caller: family, version, requests, first and last seen, and what to do; then the
verdict. `--json` prints the same as one JSON document for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from proxy import cliparse, config
from proxy.report.verdict import DEFAULT_QUIET_DAYS, verdict

TIMEOUT = 5.0


def build_parser() -> argparse.ArgumentParser:
    parser = cliparse.Parser(
        prog="imds-proxy report",
        description="Which SDKs still ask this sidecar for tokens, and whether it can be removed.",
    )
    parser.add_argument("--host", default=config.DEFAULT_HOST, help="the proxy's address")
    parser.add_argument(
        "--proxy-port",
        type=int,
        default=config.DEFAULT_PROXY_PORT,
        help="the proxy's --proxy-port (default %(default)s)",
    )
    parser.add_argument(
        "--days",
        type=int,
        default=DEFAULT_QUIET_DAYS,
        help="quiet days after which the sidecar can go (default %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    url = f"http://{args.host}:{args.proxy_port}/report"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            report: dict[str, Any] = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"imds-proxy report: cannot read {url}: {reason}", file=sys.stderr)
        return 1
    print(render(report, args.days, as_json=args.json))
    return 0


def render(report: dict[str, Any], days: int, *, as_json: bool = False) -> str:
    """The report as text (or JSON), its verdict judged at the report's own time."""
    decided = verdict(report, report["generated_at"], days)
    if as_json:
        return json.dumps({**report, "verdict": decided.as_json()}, indent=2)
    lines = [
        f"Token requests since the proxy started ({_stamp(report['started_at'])}): "
        f"{report['token_requests']}",
        "",
    ]
    if report.get("identity_source"):
        lines[1:1] = [f"Identity: {report['identity_source']}"]
    for c in report["callers"]:
        version = c["version"] or "version unknown"
        lines.append(
            f"{c['title']} [{c['client']}] {version}: {c['requests']} requests, "
            f"first {_stamp(c['first_seen'])}, last {_stamp(c['last_seen'])}"
        )
        lines.append(f"    {c['advice']}")
    if report["callers"]:
        lines.append("")
    lines.append(f"Verdict: {decided.text}")
    return "\n".join(lines)


def _stamp(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))
