"""The one log line every request writes, at a few microseconds a line.

structlog's processor chain costs about as much per line as aiohttp spends answering a
cached token, so the request line is formatted here from pre-escaped pieces, in the same
shape structlog renders (same keys and order, `level`, ISO `timestamp` in UTC), and
appended to the shared buffered log stream. The first line into an empty buffer arms one
`FLUSH_DELAY` timer that writes the buffer out: lines reach stdout within that delay, many
lines cost one write(2), and an idle process has no timer at all. The console format, for
people, goes through structlog. Values that come from callers are JSON-escaped and redacted
(`proxy.logs.redact_text`) once, where they are first seen, not per request.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import Mapping
from typing import Protocol, TextIO

from proxy import logs

_REQUEST_ID = re.compile(r"^[\w.:-]{1,64}$")
FLUSH_DELAY = 0.2
"""Seconds a request line may wait in the buffer."""


class Fields:
    """A request line's own fields, as whoever knows them gives them: name and value.

    Rendered here, once, when made: the JSON lines need `, "name": value` text (secrets
    redacted), and the ones the hot path passes are made once per remembered query or
    failure, so a request pays nothing to render them. The console format reads the
    values themselves.
    """

    __slots__ = ("_fields", "json")

    def __init__(self, fields: Mapping[str, object] | None = None) -> None:
        self._fields = dict(fields or {})
        self.json = json_fields(self._fields) if self._fields else ""

    def __add__(self, other: Fields) -> Fields:
        joined = Fields.__new__(Fields)
        joined._fields, joined.json = self._fields | other._fields, self.json + other.json
        return joined

    def as_dict(self) -> dict[str, object]:
        return dict(self._fields)


def _json_field(name: str, value: object) -> str:
    if isinstance(value, str) and "eyJ" in value:
        value = logs.redact_text(value)
    return f", {json.dumps(name)}: {json.dumps(value)}"


NO_FIELDS = Fields()


class LogFields(Protocol):
    """What `RequestLog.write` takes: `Fields`, or an object that renders its own once
    (a caller, remembered by the thousand, keeps one string and no tuple)."""

    @property
    def json(self) -> str: ...

    def as_dict(self) -> dict[str, object]: ...


def json_fields(fields: Mapping[str, object]) -> str:
    """`, "name": value` pairs as they stand inside a JSON object, secrets redacted."""
    return "".join(_json_field(k, v) for k, v in fields.items())


def _escaped(text: str) -> str:
    return json.dumps(logs.redact_text(text))


class RequestLog:
    """Writes request lines; a no-op below info level."""

    def __init__(self, level: str, fmt: str, stream: TextIO | None = None) -> None:
        self.enabled = logs.enabled_for(level, "info")
        self._structured = fmt == "console"
        self._stream = stream
        self._millis = -1
        self._stamp = ""
        self._frames: dict[tuple[str, str, str], tuple[str, str]] = {}
        self._ids = itertools.count(1)
        self._flush_armed = False

    def write(
        self,
        event: str,
        method: str,
        path: str,
        status: int,
        seconds: float,
        request_id: str | None,
        fields: LogFields = NO_FIELDS,
        caller: LogFields = NO_FIELDS,
    ) -> None:
        """`fields`: what the answer says of the request; `caller`: who asked (two, so the
        hot path joins nothing)."""
        if self._structured:  # key=value for people: the cost matters less than the format
            logs.get_logger("proxy.http").info(
                event,
                method=method,
                path=path,
                status=status,
                duration_ms=round(seconds * 1000, 3),
                request_id=request_id,
                **fields.as_dict(),
                **caller.as_dict(),
            )
            return
        millis = int(time.time() * 1000)
        if millis != self._millis:  # at a few requests per millisecond, mostly reused
            self._millis = millis
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis // 1000))
            self._stamp += f".{millis % 1000:03d}Z"
        rid = self._request_id(request_id)
        stream = self._stream
        if stream is None:
            stream = self._stream = logs.stream()
        frame = self._frames.get((event, method, path)) or self._frame(event, method, path)
        stream.write(
            f"{frame[0]}{status}, "
            f'"duration_ms": {seconds * 1000:.3f}, "request_id": {rid}'
            f'{fields.json}{caller.json}{frame[1]}{self._stamp}"}}\n'
        )
        if not self._flush_armed:
            self._arm_flush(stream)

    def _arm_flush(self, stream: TextIO) -> None:
        """One timer per filled buffer, none while idle."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a script, a test): write it out now
            stream.flush()
            return
        self._flush_armed = True
        loop.call_later(FLUSH_DELAY, self._flush, stream)

    def _flush(self, stream: TextIO) -> None:
        self._flush_armed = False
        stream.flush()

    def _frame(self, event: str, method: str, path: str) -> tuple[str, str]:
        """The line up to its status, and from the event to its timestamp, pre-escaped."""
        head = f'{{"method": {_escaped(method)}, "path": {_escaped(path)}, "status": '
        frame = head, f', "event": {_escaped(event)}, "level": "info", "timestamp": "'
        if len(self._frames) < 256:  # routes by method and event: a few; odd paths: not kept
            self._frames[(event, method, path)] = frame
        return frame

    def _request_id(self, given: str | None) -> str:
        """The caller's id (Azure SDKs send x-ms-client-request-id), else a counter."""
        if given is None:
            return f'"{next(self._ids)}"'
        if _REQUEST_ID.match(given):
            return f'"{given}"'
        return json.dumps(logs.redact_text(given)[:64])  # redact first: a cut JWT slips by
