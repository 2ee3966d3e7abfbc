"""imds-proxy-init: redirect the pod's IMDS traffic to the token proxy (nat table, IPv4 only).

TCP from this network namespace to METADATA_IP:METADATA_PORT is redirected to
127.0.0.1:PROXY_PORT, except traffic owned by PROXY_UID (the proxy itself), which still
reaches the real IMDS. A drop-in for the upstream Azure Workload Identity init container:
same variables, defaults and chains, but applied as one iptables-restore transaction and
idempotent (a restarted init container leaves exactly one copy of every rule).

environment:
  PROXY_PORT        port the proxy listens on at 127.0.0.1     (default 8000)
  METADATA_IP       IPv4 address to intercept                  (default 169.254.169.254)
  METADATA_PORT     TCP port to intercept                      (default 80)
  PROXY_UID         uid whose traffic is not redirected        (default 1501)
  IPTABLES_BACKEND  nft or legacy; unset: the one that already has rules, else nft if it
                    works, else legacy, else plain iptables
  An empty value means the default, as in upstream's script.

exit codes:
  0  done (--check: the installed rules match exactly)
  1  --check: the rules are missing or differ
  2  invalid environment variable or command line
  3  not permitted: not root, or no CAP_NET_ADMIN (iptables-legacy also needs CAP_NET_RAW)
  4  no usable iptables binary on PATH
  5  preflight failed: loopback down or no route to METADATA_IP
  6  iptables-save/-restore failed for another reason
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

from init import preflight, rules
from init.iptables import (
    Iptables,
    IptablesError,
    IptablesNotFound,
    IptablesPermissionDenied,
    discover,
    has_net_admin,
)
from init.settings import Settings, SettingsError, from_env

PROG = "imds-proxy-init"

EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_CONFIG = 2
EXIT_PERMISSION = 3
EXIT_NO_IPTABLES = 4
EXIT_PREFLIGHT = 5
EXIT_IPTABLES = 6


class _Failure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = from_env(os.environ if env is None else env)
        if args.dry_run:
            print(rules.render_apply(settings), end="")
            return EXIT_OK
        iptables = _iptables(settings)
        if args.check:
            return _check(settings, iptables)
        if args.cleanup:
            return _cleanup(iptables)
        return _apply(settings, iptables)
    except SettingsError as exc:
        return _fail(EXIT_CONFIG, str(exc))
    except _Failure as exc:
        return _fail(exc.code, str(exc))
    except IptablesPermissionDenied as exc:
        return _fail(
            EXIT_PERMISSION,
            f"{exc} (needs root with CAP_NET_ADMIN; iptables-legacy also needs CAP_NET_RAW)",
        )
    except IptablesNotFound as exc:
        return _fail(EXIT_NO_IPTABLES, str(exc))
    except IptablesError as exc:
        return _fail(EXIT_IPTABLES, str(exc))
    except preflight.PreflightError as exc:
        return _fail(EXIT_PREFLIGHT, f"preflight: {exc}")


def _parser() -> argparse.ArgumentParser:
    summary, _, details = (__doc__ or "").partition("\n\n")
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=summary,
        epilog=details,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--dry-run",
        action="store_true",
        help="print the iptables-restore text for a table without our rules; change nothing"
        " (needs neither root nor iptables)",
    )
    mode.add_argument(
        "--check",
        action="store_true",
        help="exit 0 only if the installed rules match the settings exactly",
    )
    mode.add_argument(
        "--cleanup",
        action="store_true",
        help="remove the OUTPUT jump and both chains, and nothing else",
    )
    return parser


def _iptables(settings: Settings) -> Iptables:
    if has_net_admin() is False:
        raise _Failure(
            EXIT_PERMISSION,
            f"not permitted: uid {os.geteuid()} lacks CAP_NET_ADMIN"
            " (run as root with NET_ADMIN, as the upstream init container does)",
        )
    return discover(settings.backend)


def _apply(settings: Settings, iptables: Iptables) -> int:
    preflight.check(settings.metadata_ip)
    before = rules.parse_save(iptables.save_nat())
    iptables.restore_noflush(rules.render_apply(settings, before))
    after = rules.parse_save(iptables.save_nat())
    problems = rules.mismatches(settings, after)
    if problems:
        raise _Failure(EXIT_IPTABLES, "rules differ right after applying: " + "; ".join(problems))
    _say(f"installed with {iptables.label} (table nat):", rules.installed_rules(after))
    return EXIT_OK


def _check(settings: Settings, iptables: Iptables) -> int:
    problems = rules.mismatches(settings, rules.parse_save(iptables.save_nat()))
    if problems:
        _say(f"rules do not match ({iptables.label}):", problems)
        return EXIT_MISMATCH
    _say(f"rules match ({iptables.label}):", rules.expected_rules(settings))
    return EXIT_OK


def _cleanup(iptables: Iptables) -> int:
    before = rules.parse_save(iptables.save_nat())
    text = rules.render_cleanup(before)
    if text is None:
        _say(f"nothing to remove ({iptables.label})", [])
        return EXIT_OK
    iptables.restore_noflush(text)
    left = rules.installed_rules(rules.parse_save(iptables.save_nat()))
    if left:
        raise _Failure(EXIT_IPTABLES, "rules remain after cleanup: " + "; ".join(left))
    _say(f"removed with {iptables.label} (table nat):", rules.installed_rules(before))
    return EXIT_OK


def _say(headline: str, lines: Sequence[str]) -> None:
    print(f"{PROG}: {headline}")
    for line in lines:
        print(f"  {line}")
    sys.stdout.flush()


def _fail(code: int, message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code
