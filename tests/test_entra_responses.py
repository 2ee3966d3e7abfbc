"""How `EntraExchange` reads answers the fake Entra ID never gives: a token endpoint that
answers with something other than JSON (an HTTPS proxy's error page, an odd 429).

A minimal TLS server stands in for Entra ID here; MSAL talks to it for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from proxy.assertion import AssertionSource
from proxy.devissuer.pki import generate_tls_files
from proxy.tokens.entra import EntraExchange
from proxy.tokens.errors import (
    EntraRejected,
    EntraThrottled,
    EntraUnavailable,
    FederationRejected,
)
from proxy.tokens.model import TokenKey
from tests.support.jwt_claims import unsigned

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
KEY = TokenKey(TENANT, "11111111-2222-3333-4444-555555555555", "https://vault.azure.net/.default")


@dataclass
class Answer:
    status: int = 200
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Endpoint:
    authority_host: str
    ca_bundle: str
    answer: Answer


@pytest.fixture
async def endpoint(tmp_path: Path) -> AsyncIterator[Endpoint]:
    tls = generate_tls_files(tmp_path / "pki")
    answer = Answer()

    async def discovery(request: web.Request) -> web.Response:
        base = f"https://{request.host}/{TENANT}"
        return web.json_response(
            {
                "issuer": f"{base}/v2.0",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
            }
        )

    async def token(request: web.Request) -> web.Response:
        return web.Response(status=answer.status, text=answer.body, headers=answer.headers)

    app = web.Application()
    app.router.add_get(f"/{TENANT}/v2.0/.well-known/openid-configuration", discovery)
    app.router.add_post(f"/{TENANT}/oauth2/v2.0/token", token)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.server_context())
    await site.start()
    port = runner.addresses[0][1]
    yield Endpoint(f"https://127.0.0.1:{port}/", str(tls.ca_bundle), answer)
    await runner.cleanup()


def exchange_for(endpoint: Endpoint, tmp_path: Path) -> EntraExchange:
    token_file = tmp_path / "token"
    token_file.write_text(unsigned({"exp": time.time() + 3600}))
    return EntraExchange(
        endpoint.authority_host,
        AssertionSource(str(token_file)),
        ca_bundle=endpoint.ca_bundle,
        timeout=5,
    )


@pytest.fixture
async def exchange(endpoint: Endpoint, tmp_path: Path) -> AsyncIterator[EntraExchange]:
    """An exchange against the endpoint, closed after the test (its session, its threads)."""
    made = exchange_for(endpoint, tmp_path)
    yield made
    await made.aclose()


async def test_a_non_json_429_is_throttling_with_its_retry_after(
    endpoint: Endpoint, exchange: EntraExchange
) -> None:
    endpoint.answer.status, endpoint.answer.body = 429, "<html>slow down</html>"
    endpoint.answer.headers = {"Retry-After": "120"}
    with pytest.raises(EntraThrottled) as raised:
        await exchange(KEY)
    assert raised.value.retry_after == 120


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (407, "<html>proxy authentication</html>"),
        (400, "<html><body>Bad Request</body></html>"),
        (400, '{"error": "invalid_request", "error_descr'),  # cut short
        (400, '{"message": "not an OAuth error"}'),
    ],
)
async def test_a_4xx_that_is_not_entras_json_is_transient_not_final(
    endpoint: Endpoint, exchange: EntraExchange, status: int, body: str
) -> None:
    """A proxy's page, HTML or truncated JSON is not Entra's judgement of the request: SDKs
    must retry it (5xx), not give up (a final 400)."""
    endpoint.answer.status, endpoint.answer.body = status, body
    with pytest.raises(EntraUnavailable):
        await exchange(KEY)


async def test_an_oversized_body_is_refused_and_never_quoted(
    endpoint: Endpoint, exchange: EntraExchange
) -> None:
    marker = "AADSTS90002: " + "x" * (10 * 1024 * 1024)
    endpoint.answer.status = 400
    endpoint.answer.body = json.dumps({"error": "invalid_request", "error_description": marker})
    with pytest.raises(EntraUnavailable) as raised:
        await exchange(KEY)
    assert "oversized" in raised.value.description
    assert len(raised.value.description) < 200


async def test_a_long_error_description_is_cut(endpoint: Endpoint, exchange: EntraExchange) -> None:
    endpoint.answer.status = 400
    endpoint.answer.body = json.dumps(
        {"error": "invalid_request", "error_description": "AADSTS90002: " + "y" * 30_000}
    )
    with pytest.raises(EntraRejected) as raised:
        await exchange(KEY)
    assert len(raised.value.description) <= 1024 + 3


async def test_a_non_json_200_is_an_outage(endpoint: Endpoint, exchange: EntraExchange) -> None:
    endpoint.answer.status, endpoint.answer.body = 200, "<html>captive portal</html>"
    with pytest.raises(EntraUnavailable):
        await exchange(KEY)


async def test_a_json_answer_still_gives_a_token(
    endpoint: Endpoint, exchange: EntraExchange
) -> None:
    endpoint.answer.body = json.dumps(
        {"token_type": "Bearer", "expires_in": 3599, "access_token": "eyJ.a.b"}
    )
    token = await exchange(KEY)
    assert token.value == "eyJ.a.b" and 3590 < token.expires_on - time.time() <= 3599


async def test_concurrent_exchanges_share_one_tls_context(
    endpoint: Endpoint, tmp_path: Path
) -> None:
    """One context (and one loaded CA bundle) for every connection, however many threads
    exchange at once; each connection still verified the server against it."""
    endpoint.answer.body = json.dumps(
        {"token_type": "Bearer", "expires_in": 3599, "access_token": "eyJ.a.b"}
    )
    exchange = exchange_for(endpoint, tmp_path)
    keys = [TokenKey(TENANT, KEY.client_id, f"https://r{i}.example/.default") for i in range(4)]
    tokens = await asyncio.gather(*(exchange(k) for k in keys))
    assert [t.value for t in tokens] == ["eyJ.a.b"] * 4
    context = exchange._http._ssl
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.cert_store_stats()["x509_ca"] == 1  # the endpoint's CA, loaded once
    await exchange.aclose()


async def test_the_deadline_covers_the_whole_exchange_however_slowly_the_peer_trickles(
    tmp_path: Path,
) -> None:
    """A per-read timeout lets a peer that sends one byte a second hold an exchange for
    ever; the exchange's deadline ends it, and its thread, on time."""

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            for _ in range(30):  # bounded: 30 bytes over at most 15 s
                writer.write(b"H")
                await writer.drain()
                await asyncio.sleep(0.5)
        writer.close()

    tls = generate_tls_files(tmp_path / "pki")
    server = await asyncio.start_server(trickle, "127.0.0.1", 0, ssl=tls.server_context())
    port = server.sockets[0].getsockname()[1]
    (tmp_path / "token").write_text(unsigned({"exp": time.time() + 3600}))
    exchange = EntraExchange(
        f"https://127.0.0.1:{port}",
        AssertionSource(str(tmp_path / "token")),
        ca_bundle=str(tls.ca_bundle),
        timeout=2,
    )
    started = time.monotonic()
    with pytest.raises(EntraUnavailable):
        await exchange(KEY)
    assert time.monotonic() - started < 3.0
    await exchange.aclose()
    server.close()


async def test_a_server_the_ca_bundle_does_not_vouch_for_is_refused(
    endpoint: Endpoint, tmp_path: Path
) -> None:
    other = generate_tls_files(tmp_path / "other-pki")
    exchange = EntraExchange(
        endpoint.authority_host,
        exchange_for(endpoint, tmp_path)._assertion,
        ca_bundle=str(other.ca_bundle),
        timeout=5,
    )
    with pytest.raises(EntraUnavailable, match="TLS verification failed"):
        await exchange(KEY)
    await exchange.aclose()


def entra_error(code: int, error: str, message: str) -> str:
    return json.dumps(
        {
            "error": error,
            "error_description": f"AADSTS{code}: {message}\r\nTrace ID: t\r\nCorrelation ID: c",
            "error_codes": [code],
        }
    )


async def test_a_federation_code_is_explained_with_the_tokens_claims(
    endpoint: Endpoint, tmp_path: Path
) -> None:
    payload = {
        "exp": time.time() + 3600,
        "iss": "https://oidc.example/abc",
        "sub": "system:serviceaccount:shop:orders",
        "aud": ["api://AzureADTokenExchange"],
    }
    assertion = unsigned(payload)
    (tmp_path / "token").write_text(assertion)
    exchange = EntraExchange(
        endpoint.authority_host,
        AssertionSource(str(tmp_path / "token")),
        ca_bundle=endpoint.ca_bundle,
        timeout=5,
    )
    endpoint.answer.status = 400
    endpoint.answer.body = entra_error(700213, "invalid_client", "No matching federated record")
    with pytest.raises(FederationRejected) as raised:
        await exchange(KEY)
    failure = raised.value
    assert (failure.cause, failure.propagates, failure.aadsts) == (
        "no_matching_credential",
        True,
        "700213",
    )
    assert failure.description.startswith("AADSTS700213: no federated identity credential")
    assert "--issuer https://oidc.example/abc --subject system:serviceaccount:shop:orders" in (
        failure.description
    )
    assert "aud=api://AzureADTokenExchange" in failure.description
    assert assertion.split(".")[1] not in failure.description
    await exchange.aclose()


async def test_an_unknown_code_passes_through_as_entra_wrote_it(
    endpoint: Endpoint, exchange: EntraExchange
) -> None:
    endpoint.answer.status = 400
    endpoint.answer.body = entra_error(7000215, "invalid_client", "Invalid client secret.")
    with pytest.raises(EntraRejected) as raised:
        await exchange(KEY)
    assert not isinstance(raised.value, FederationRejected)
    assert raised.value.description.startswith("AADSTS7000215: Invalid client secret.")


@pytest.mark.parametrize("token_type", ["bearer", "BEARER", None])
async def test_the_token_type_is_always_spelled_bearer(
    endpoint: Endpoint, exchange: EntraExchange, token_type: str | None
) -> None:
    """ms_rest_azure sends `"#{token_type} #{token}"`; IMDS always says `Bearer`."""
    answer = {"token_type": token_type, "expires_in": 3599, "access_token": "eyJ.a.b"}
    endpoint.answer.body = json.dumps({k: v for k, v in answer.items() if v is not None})
    token = await exchange(KEY)
    assert token.token_type == "Bearer"
