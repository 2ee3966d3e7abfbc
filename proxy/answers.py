"""A failure in one protocol's shape, rendered once and sent as often as it is asked for.

Each protocol module (`imds`, `appservice`) writes its own bodies; this is where they
become responses, so the headers (Retry-After) and the request line record failures the
same way for every protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from proxy.failures import Failure
from proxy.requestlog import Fields

JSON = "application/json; charset=utf-8"
Answer = tuple[web.StreamResponse, Fields]
"""A response and its request-log fields."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A failure with its body, headers and request-line fields, built once: constants
    and remembered refusals cost a response object per request, nothing more."""

    failure: Failure
    body: bytes
    headers: Mapping[str, str]
    fields: Fields

    @classmethod
    def of(cls, failure: Failure, body: bytes) -> Refusal:
        headers = {"Content-Type": JSON}
        retry_after = failure.retry_after_header()
        if retry_after is not None:
            headers["Retry-After"] = retry_after
        return cls(failure, body, headers, failure.log_fields())

    @property
    def status(self) -> int:
        return self.failure.status

    def answer(self) -> Answer:
        response = web.Response(status=self.failure.status, body=self.body, headers=self.headers)
        return response, self.fields
