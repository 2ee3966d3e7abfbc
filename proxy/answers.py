"""An error of any token protocol as an aiohttp response, and what its request line says.

Each protocol module (`imds`, `appservice`) builds its own bodies; this is where they turn
into responses, so the request line records failures the same way for both.
"""

from __future__ import annotations

from aiohttp import web

from proxy.imds import ImdsError
from proxy.requestlog import json_fields


def error_answer(err: ImdsError) -> tuple[web.StreamResponse, str]:
    """The error answer, and the request line's fields (the kind; the text for 429/5xx)."""
    fields: dict[str, object] = {"error": err.reason}
    if err.status >= 500 or err.status == 429:
        fields["reason"] = err.description
    response = web.Response(status=err.status, body=err.body, headers=err.headers)
    return response, json_fields(fields)
