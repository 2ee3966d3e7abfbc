"""The log pipeline: one format for structlog and standard-library loggers, redaction."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import structlog

from proxy import logs
from proxy.requestlog import FLUSH_DELAY, RequestLog

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


def configured(level: str = "info", fmt: str = "json") -> io.StringIO:
    stream = io.StringIO()
    logs.configure(level, fmt, stream=stream)
    return stream


def teardown_function() -> None:
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def test_structlog_and_stdlib_lines_are_json_and_redacted() -> None:
    stream = configured()
    logs.get_logger("t").info("an event", detail=f"Bearer {JWT}", count=3)
    logging.getLogger("aiohttp.server").error("failed with %s", JWT)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["event"] == "an event" and lines[0]["count"] == 3
    assert lines[0]["level"] == "info" and lines[0]["timestamp"].endswith("Z")
    assert lines[0]["detail"] == "Bearer [redacted]"
    assert lines[1]["level"] == "error" and "[redacted]" in lines[1]["event"]
    assert JWT not in stream.getvalue()


def test_level_applies_to_both_kinds_of_logger() -> None:
    stream = configured("warning")
    logs.get_logger("t").info("quiet")
    logging.getLogger("msal").info("quiet too")
    logs.get_logger("t").warning("loud")
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["loud"]


def test_msal_stays_at_warning_unless_debug() -> None:
    configured("info")
    assert logging.getLogger("msal").level == logging.WARNING
    configured("debug")
    assert logging.getLogger("msal").level == logging.DEBUG


def test_console_format_is_key_value() -> None:
    stream = configured(fmt="console")
    logs.get_logger("t").info("an event", client_id="abc")
    text = stream.getvalue()
    assert "an event" in text and "client_id=abc" in text and not text.startswith("{")


def test_a_token_sent_as_request_id_is_redacted_before_it_is_cut() -> None:
    stream = io.StringIO()
    request_log = RequestLog("info", "json", stream=stream)
    token = JWT + "x" * 100  # longer than the 64 characters kept
    request_log.write("received token request", "GET", "/p", 200, 0.001, token)
    request_log.write("received token request", "GET", "/p", 200, 0.001, None)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert "eyJ" not in stream.getvalue()
    assert first["request_id"].startswith("[redacted]")
    assert isinstance(second["request_id"], str)  # one type for log pipelines


class _CountingStream(io.StringIO):
    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_request_lines_are_flushed_once_per_burst_and_no_timer_waits_while_idle() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        stream = _CountingStream()
        request_log = RequestLog("info", "json", stream=stream)
        assert not loop._scheduled  # type: ignore[attr-defined]
        for _ in range(3):
            request_log.write("received token request", "GET", "/p", 200, 0.001, None)
        assert stream.flushes == 0 and len(loop._scheduled) == 1  # type: ignore[attr-defined]
        await asyncio.sleep(FLUSH_DELAY * 2)
        assert stream.flushes == 1
        assert not loop._scheduled  # type: ignore[attr-defined]  # idle: nothing armed
        request_log.write("received token request", "GET", "/p", 200, 0.001, None)
        await asyncio.sleep(FLUSH_DELAY * 2)
        assert stream.flushes == 2 and len(stream.getvalue().splitlines()) == 4

    asyncio.run(scenario())
