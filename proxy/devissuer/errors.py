"""Entra-shaped error responses.

Callers (MSAL, the proxy, people reading logs) key off the ``AADSTSnnnnnn:`` prefix, the
``error`` string and the ``error_codes`` list, so the fake reproduces Entra's JSON layout,
including the ``Trace ID``/``Correlation ID``/``Timestamp`` trailer in the description,
each on its own ``\r\n``-separated line as Entra writes it.

Every rejection of a token request is a ``400``, as MSAL users see for the federated
credential codes (AADSTS70021, 700211-700213, 700016, 700024); only throttling (``429``) and
injected failures (``5xx``) differ.
"""

from __future__ import annotations

import datetime
import json
import uuid

from aiohttp import web

# Codes the issuer answers with, named for readability at the raise sites.
TENANT_NOT_FOUND = 90002
MISSING_PARAMETER = 900144
UNSUPPORTED_GRANT = 70003
APP_NOT_FOUND = 700016
MISSING_CLIENT_CREDENTIAL = 7000218
MALFORMED_TOKEN = 50027
BAD_SIGNATURE = 700027
ASSERTION_TIME = 700024
NO_FEDERATED_RECORD = 70021
NO_MATCHING_ISSUER = 700211
NO_MATCHING_AUDIENCE = 700212
NO_MATCHING_SUBJECT = 700213
INVALID_SCOPE = 70011
SCOPE_NOT_DEFAULT = 1002012
RESOURCE_NOT_FOUND = 500011
ISSUER_UNREACHABLE = 90061
THROTTLED = 90055
TRANSIENT = 90033

_MAX_ECHO = 200


def clip(value: object) -> str:
    """Bound a caller-supplied value before it is quoted in an error description."""
    text = str(value)
    return text if len(text) <= _MAX_ECHO else text[:_MAX_ECHO] + "..."


class EntraError(Exception):
    """A rejection to render as Entra's error JSON."""

    def __init__(self, code: int, error: str, message: str, status: int = 400) -> None:
        super().__init__(f"AADSTS{code}: {message}")
        self.code = code
        self.error = error
        self.message = message
        self.status = status

    @property
    def outcome(self) -> str:
        """The key under which this rejection is counted in the stats."""
        return f"AADSTS{self.code}"

    def response(
        self,
        *,
        host: str,
        correlation_id: str,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        trace_id = str(uuid.uuid4())
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        body = {
            "error": self.error,
            "error_description": (
                f"AADSTS{self.code}: {self.message}\r\nTrace ID: {trace_id}\r\n"
                f"Correlation ID: {correlation_id}\r\nTimestamp: {now}"
            ),
            "error_codes": [self.code],
            "timestamp": now,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"https://{host}/error?code={self.code}",
        }
        all_headers = {
            "Cache-Control": "no-store, no-cache",
            "client-request-id": correlation_id,
            "x-ms-request-id": trace_id,
            **(headers or {}),
        }
        return web.Response(
            status=self.status,
            text=json.dumps(body),
            content_type="application/json",
            headers=all_headers,
        )
