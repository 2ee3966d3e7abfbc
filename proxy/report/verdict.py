"""The migration guide's last step, decided from a report: is the sidecar still needed?

Pure functions of the report the proxy serves and of "now", so a test can replay any
history. Quiet time counts only while the proxy ran: a proxy restarted yesterday has seen
one quiet day, whatever happened before.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

DAY = 86400.0
DEFAULT_QUIET_DAYS = 7


@dataclass(frozen=True, slots=True)
class Verdict:
    removable: bool
    quiet_days: float
    """Days since the last token request (or since the start, when none came)."""
    text: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def verdict(report: dict[str, Any], now: float, days: int = DEFAULT_QUIET_DAYS) -> Verdict:
    """Removable once no token request came for `days` days of the proxy's uptime."""
    last = report.get("last_token_request_at")
    quiet = (now - (last if last is not None else report["started_at"])) / DAY
    if quiet >= days:
        return Verdict(
            True,
            quiet,
            f"no token request for {int(quiet)} days: the sidecar can be removed "
            "(redeploy the pods without it and without the init container)",
        )
    if last is None:
        return Verdict(
            False,
            quiet,
            f"no token request since the proxy started {_ago(quiet)} ago: watch it for "
            f"{days} days before removing the sidecar",
        )
    recent = [c for c in report["callers"] if now - c["last_seen"] < days * DAY]
    needing = [c for c in recent if c["advice_kind"] != "direct"]
    text = (
        f"the sidecar is still needed: {len(recent)} caller(s) asked for tokens in the last "
        f"{days} days, the last {_ago(quiet)} ago"
    )
    if needing:
        text += f"; {len(needing)} of them cannot use workload identity yet"
    return Verdict(False, quiet, text)


def _ago(days: float) -> str:
    seconds = days * DAY
    if seconds < 3600:
        return f"{int(seconds // 60)} minutes"
    if seconds < DAY:
        return f"{int(seconds // 3600)} hours"
    return f"{int(days)} days"
