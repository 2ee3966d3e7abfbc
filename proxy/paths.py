"""One reading of a request path, used both to route it and to forward it.

The real IMDS answers identity requests with the *node's* managed identity, so no spelling
of an identity path may ever reach it. A path is judged by its canonical form: percent-
decoded (repeatedly: `%2569` is judged as `i`), `;parameters` dropped, `\\` read as `/`,
repeated slashes collapsed, `.` and `..` resolved, compared case-insensitively (as Azure
endpoints match paths). Everything under `/metadata/identity` is answered here; only an
allowlist of other IMDS categories is forwarded, and what is forwarded is the canonical
path itself, re-encoded, so the upstream sees exactly what was judged.

A path that cannot be read that way (non-ASCII, control characters, still encoded after
several rounds) is refused, never guessed at.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import unquote_to_bytes, urlsplit

TOKEN_PATH = "/metadata/identity/oauth2/token"
APP_SERVICE_PATH = "/msi/token"
IDENTITY_PREFIX = "/metadata/identity"

FORWARDED_CATEGORIES = frozenset(
    ("instance", "attested", "loadbalancer", "scheduledevents", "versions")
)
"""The non-identity IMDS categories, `/metadata/<category>[/...]`."""

EXACT_ROUTES = {
    TOKEN_PATH: "token",
    TOKEN_PATH + "/": "token",
    APP_SERVICE_PATH: "appservice",
    APP_SERVICE_PATH + "/": "appservice",
    "/readyz": "readyz",
    "/healthz": "healthz",
    "/status": "status",
    "/report": "report",
}
"""Canonical (lower-case) paths answered by the proxy itself, and their route names."""

_MAX_DECODES = 4
_ENCODED = re.compile(r"%[0-9A-Fa-f]{2}")
_FORWARDABLE_SEGMENT = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\Z")
"""What a forwarded path segment may be: IMDS's own are words, digits and dots between."""


class Route(NamedTuple):
    """Where a request goes: a route name, and for `metadata` the path to forward."""

    name: str
    forward_path: str = ""


INVALID = Route("invalid")
IDENTITY = Route("identity")
NOT_FOUND = Route("other")


def route_for(target: str) -> Route:
    """The route for a request target (origin form `/p?q` or absolute form `http://h/p?q`)."""
    path = urlsplit(target).path if not target.startswith("/") else target.partition("?")[0]
    canonical = canonical_path(path)
    if canonical is None:
        return INVALID
    folded = canonical.lower()
    exact = EXACT_ROUTES.get(folded)
    if exact is not None:
        return Route(exact)
    if folded == IDENTITY_PREFIX or folded.startswith(IDENTITY_PREFIX + "/"):
        return IDENTITY
    segments = canonical.split("/")  # ["", "metadata", category, ...]
    if (
        len(segments) >= 3
        and segments[1].lower() == "metadata"
        and segments[2].lower() in FORWARDED_CATEGORIES
    ):
        if all(_FORWARDABLE_SEGMENT.match(s) for s in segments[1:-1]) and (
            not segments[-1] or _FORWARDABLE_SEGMENT.match(segments[-1])
        ):
            return Route("metadata", canonical)
        return INVALID
    return NOT_FOUND


def canonical_path(raw: str) -> str | None:
    """The canonical form of a raw (still percent-encoded) path, case kept; None when it
    cannot be read unambiguously."""
    path = raw
    for _ in range(_MAX_DECODES):
        if "%" not in path:
            break
        try:
            path = unquote_to_bytes(path).decode("ascii")
        except UnicodeDecodeError:
            return None
    if _ENCODED.search(path) or not path.isascii() or not path.isprintable() or " " in path:
        return None
    segments: list[str] = []
    trailing_slash = False
    for segment in path.replace("\\", "/").split("/"):
        segment = segment.partition(";")[0]
        trailing_slash = segment in ("", ".", "..")
        if segment == "..":
            if segments:
                segments.pop()
        elif segment not in ("", "."):
            segments.append(segment)
    canonical = "/" + "/".join(segments)
    if trailing_slash and segments:
        canonical += "/"
    return canonical
