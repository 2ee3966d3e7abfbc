"""The MSAL-facing HTTP client on the loop: nothing outlives `aclose`."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from proxy.tokens.errors import EntraUnavailable
from proxy.tokens.loophttp import LoopHttpClient


async def test_a_request_scheduled_before_aclose_and_run_after_it_opens_no_session() -> None:
    """A worker thread's request may reach the loop after shutdown closed the session: it
    must fail, not open a new session that nobody closes."""
    client = LoopHttpClient(ssl.create_default_context())
    client.bind(asyncio.get_running_loop())
    await client.aclose()
    with pytest.raises(EntraUnavailable, match="shutting down"):
        await client._request("POST", "https://127.0.0.1:9/token", None, None, None, 1.0)
    assert client._session is None
