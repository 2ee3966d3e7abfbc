"""Spellings of identity paths that must never reach the real IMDS, and a raw HTTP client.

Each spelling is sent as the raw request target (no client library normalises it). The
proxy must answer every one itself: a token for the spellings that mean the token path, a
JSON 4xx for the rest. Shared by the loopback test and the network-namespace pod test.
"""

from __future__ import annotations

import json
import socket
from typing import Any

QUERY = "?api-version=2018-02-01&resource=https://management.azure.com/"

TOKEN_SPELLINGS = [
    "/metadata/identity/oauth2/token",
    "/metadata/identity/oauth2/token/",
    "/metadata/identity/OAuth2/token",
    "/METADATA/IDENTITY/OAUTH2/TOKEN",
    "/metadata/identity/oauth2/TOKEN/",
    "/metadata//identity/oauth2/token",
    "//metadata/identity/oauth2/token",
    "/metadata/identity/oauth2//token",
    "/metadata/identity/oauth2/./token",
    "/metadata/identity/./oauth2/token",
    "/metadata/identity/oauth2/token/.",
    "/metadata/instance/../identity/oauth2/token",
    "/x/../metadata/identity/oauth2/token",
    "/metadata/instance./../identity/oauth2/token",
    "/metadata/identity/oauth2/token;x",
    "/metadata;a/identity;b/oauth2;c/token;d",
    "/metadata/instance/..;/identity/oauth2/token",
    "/metadata%2Fidentity%2Foauth2%2Ftoken",
    "/metadata/%69dentity/oauth2/token",
    "/metadata/identity/oauth2/%74%6F%6B%65%6E",
    "/metadata/%2569dentity/oauth2/token",
    "/metadata/instance/%2e%2e/identity/oauth2/token",
    "/metadata/instance/..%2Fidentity/oauth2/token",
    "/metadata/instance/..%5Cidentity/oauth2/token",
    "/metadata/instance/%252e%252e/identity/oauth2/token",
]
"""Spellings that mean the token path: answered with a token."""

REFUSED_SPELLINGS = [
    "/metadata/identity",
    "/metadata/identity/",
    "/metadata/identity/getplatformmetadata",
    "/metadata/Identity/GetPlatformMetadata",
    "/metadata/identity/issuecredential",
    "/metadata/identity/oauth2",
    "/metadata/identity/oauth2/token/extra",
    "/metadata/identity/oauth2/authorize",
    "/metadata/identity/credential",
    "/metadata/instance/../identity/issuecredential",
    "/metadata/identity%2Fgetplatformmetadata",
    "/metadata/identity./oauth2/token",
    "/metadata/identity%20/oauth2/token",
    "/metadata/%C4%B1dentity/oauth2/token",
    "/metadata/identity%00/oauth2/token",
    "/metadata/%2525252569dentity/oauth2/token",
    "/metadata/instance/..%00/identity/oauth2/token",
    "/metadata/instance/compute/../../identity/oauth2/token/x",
]
"""Identity paths (or unreadable ones) that are not the token path: a JSON 4xx."""


def raw_get(
    host: str, port: int, target: str, headers: dict[str, str] | None = None, timeout: float = 10
) -> tuple[int, dict[str, str], bytes]:
    """GET with ``target`` exactly as given in the request line; (status, headers, body)."""
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return int(status_line.split(" ", 2)[1]), parsed, body


def judged_by_proxy(status: int, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """The proxy's own answer: a token, or an IMDS-style JSON 4xx. Returns the body."""
    assert headers.get("content-type", "").startswith("application/json"), (status, body)
    parsed: dict[str, Any] = json.loads(body)
    if status == 200:
        assert parsed["token_type"] == "Bearer" and parsed["access_token"], parsed
    else:
        assert 400 <= status < 500, (status, parsed)
        assert set(parsed) == {"error", "error_description"}, parsed
    return parsed


def misjudged_spellings(port: int) -> list[tuple[str, int, Any]]:
    """Every spelling sent to the proxy on `port`: the ones answered other than a token
    where it means the token path, else a JSON 400 or 404 (empty when all are right)."""
    assert len(TOKEN_SPELLINGS) + len(REFUSED_SPELLINGS) >= 30
    cases = [(t, True) for t in TOKEN_SPELLINGS] + [(t, False) for t in REFUSED_SPELLINGS]
    wrong = []
    for target, means_token in cases:
        status, headers, body = raw_get("127.0.0.1", port, target + QUERY, {"Metadata": "true"})
        answer = judged_by_proxy(status, headers, body)
        if (status == 200) != means_token or status not in (200, 400, 404):
            wrong.append((target, status, answer.get("error")))
    return wrong
