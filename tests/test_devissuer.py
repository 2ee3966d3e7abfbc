"""The local issuer behaves like Entra ID to real clients, over real TLS, on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import msal
import pytest
import requests
from cryptography import x509

from harness.fake_entra import (
    FakeEntra,
    FakeEntraError,
)
from proxy.devissuer.exchange import object_id_of, resource_id_of
from proxy.devissuer.pki import generate_tls_files
from proxy.devissuer.satoken import mint_service_account_token, write_projected_token
from proxy.devissuer.server import DEFAULT_CLIENT_ID, DEFAULT_TENANT_ID, LocalIssuer
from proxy.devissuer.signing import SigningKey
from tests.support.rotation import read_while_rotating

TIMEOUT = 10.0
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
VAULT = "https://vault.azure.net"


def _session(entra: FakeEntra) -> requests.Session:
    """Trust only the issuer's CA; ignore proxy and CA-bundle variables from the host."""
    session = requests.Session()
    session.trust_env = False
    session.verify = entra.info.ca_bundle
    return session


def _msal_app(
    entra: FakeEntra, client_id: str | None = None, assertion: Callable[[], str] | None = None
) -> msal.ConfidentialClientApplication:
    token_file = Path(entra.info.token_file)
    return msal.ConfidentialClientApplication(
        client_id or entra.info.client_id,
        client_credential={"client_assertion": assertion or token_file.read_text},
        authority=f"{entra.info.authority_host}{entra.info.tenant_id}",
        instance_discovery=False,
        http_client=_session(entra),
        timeout=TIMEOUT,
    )


def _form(entra: FakeEntra, **overrides: str | None) -> dict[str, str]:
    form: dict[str, str | None] = {
        "client_id": entra.info.client_id,
        "grant_type": "client_credentials",
        "scope": f"{VAULT}/.default",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": Path(entra.info.token_file).read_text(),
        **overrides,
    }
    return {k: v for k, v in form.items() if v is not None}


def _post(entra: FakeEntra, form: dict[str, str], url: str | None = None) -> requests.Response:
    with _session(entra) as session:
        return session.post(url or entra.token_endpoint, data=form, timeout=TIMEOUT)


def _claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def _assert_entra_error(resp: requests.Response, status: int, code: int, error: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    body = resp.json()
    assert body["error"] == error
    assert body["error_codes"] == [code]
    description = body["error_description"]
    assert description.startswith(f"AADSTS{code}: ")
    for part in ("Trace ID: ", "Correlation ID: ", "Timestamp: "):
        assert part in description
    assert body["trace_id"] in description and body["correlation_id"] in description
    assert body["timestamp"] in description
    assert body["error_uri"].endswith(f"/error?code={code}")


# -- MSAL, the production code path ------------------------------------------------------


def test_msal_gets_token_with_entra_claims(fake_entra: FakeEntra) -> None:
    info = fake_entra.info
    result = _msal_app(fake_entra).acquire_token_for_client([f"{VAULT}/.default"])
    assert "access_token" in result, result
    assert result["token_type"] == "Bearer"
    assert isinstance(result["expires_in"], int) and 3500 <= result["expires_in"] <= 3599
    stats = fake_entra.stats()
    assert stats["token_requests"]["by_outcome"] == {"success": 1}
    assert stats["openid_config_requests"] == 1  # MSAL's discovery, once

    with _session(fake_entra) as session:
        config_url = f"{info.authority_host}{info.tenant_id}/v2.0/.well-known/openid-configuration"
        jwks_uri = session.get(config_url, timeout=TIMEOUT).json()["jwks_uri"]
        jwks = session.get(jwks_uri, timeout=TIMEOUT).json()
    header = jwt.get_unverified_header(result["access_token"])
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    claims = jwt.decode(
        result["access_token"],
        jwt.PyJWK(key).key,
        algorithms=["RS256"],
        audience=VAULT,
        issuer=f"https://sts.windows.net/{info.tenant_id}/",
    )
    assert claims["appid"] == claims["azp"] == info.client_id
    assert claims["tid"] == info.tenant_id
    assert claims["idtyp"] == "app"
    assert claims["oid"] == claims["sub"] == fake_entra.object_id() != info.client_id
    assert claims["xms_mirid"] == fake_entra.resource_id()
    assert claims["xms_mirid"].startswith("/subscriptions/")
    assert "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/" in claims["xms_mirid"]
    assert claims["uti"] and claims["jti"]
    assert claims["iat"] <= time.time() + 1 and claims["nbf"] <= claims["iat"] + 1
    assert claims["exp"] - claims["iat"] == 3599


def test_identity_ids_are_fixed_per_client_and_distinct() -> None:
    tenant, first, second = (
        DEFAULT_TENANT_ID,
        DEFAULT_CLIENT_ID,
        "0b8f3c1e-6a2d-4d7e-9f10-3c4b5a6d7e8f",
    )
    assert object_id_of(tenant, first) == object_id_of(tenant, first)
    assert len({object_id_of(tenant, c) for c in (first, second)} | {first, second}) == 4
    assert resource_id_of(tenant, first) != resource_id_of(tenant, second)


def test_msal_sees_missing_credential_then_propagation(fake_entra: FakeEntra) -> None:
    """Until a matching federated credential exists: AADSTS700213; afterwards: a token."""
    fake_entra.set_federated_credentials([fake_entra.matching_credential(subject="other")])
    failed = _msal_app(fake_entra).acquire_token_for_client([f"{VAULT}/.default"])
    assert failed.get("error") == "invalid_client"
    assert failed["error_codes"] == [700213]
    assert "system:serviceaccount:default:workload" in failed["error_description"]

    fake_entra.set_federated_credentials([fake_entra.matching_credential()])
    ok = _msal_app(fake_entra).acquire_token_for_client([f"{VAULT}/.default"])
    assert "access_token" in ok, ok


def test_extra_client_and_trailing_slash_resource(tmp_path: Path) -> None:
    extra = "0a1b2c3d-0000-4000-8000-00000000beef"
    with FakeEntra(tmp_path, extra_args=["--extra-client-id", extra]) as entra:
        assert entra.info.extra_client_ids == (extra,)
        result = _msal_app(entra, extra).acquire_token_for_client(
            ["https://management.azure.com//.default"]
        )
        assert "access_token" in result, result
        assert _claims(result["access_token"])["aud"] == "https://management.azure.com/"
        assert _claims(result["access_token"])["appid"] == extra
        assert entra.stop() == 0  # SIGTERM is a clean exit


def test_only_the_throwaway_ca_is_trusted(fake_entra: FakeEntra) -> None:
    with requests.Session() as session:
        session.trust_env = False
        with pytest.raises(requests.exceptions.SSLError):
            session.get(f"{fake_entra.info.control_url}/stats", timeout=TIMEOUT, verify=True)


def test_azure_identity_workload_credential(fake_entra: FakeEntra) -> None:
    """azure-identity's own (non-MSAL) token client accepts the fake too."""
    from azure.identity import WorkloadIdentityCredential

    info = fake_entra.info
    credential = WorkloadIdentityCredential(
        tenant_id=info.tenant_id,
        client_id=info.client_id,
        token_file_path=info.token_file,
        authority=info.authority_host,
        connection_verify=info.ca_bundle,
        connection_timeout=TIMEOUT,
        read_timeout=TIMEOUT,
    )
    token = credential.get_token(f"{VAULT}/.default")
    assert _claims(token.token)["aud"] == VAULT
    assert token.expires_on > time.time() + 3000


# -- the token endpoint ------------------------------------------------------------------


def test_every_token_is_unique(fake_entra: FakeEntra) -> None:
    tokens = [_post(fake_entra, _form(fake_entra)).json()["access_token"] for _ in range(3)]
    assert len(set(tokens)) == 3
    assert len({_claims(t)["uti"] for t in tokens}) == 3


def test_discovery_urls_follow_the_host_header(fake_entra: FakeEntra) -> None:
    info = fake_entra.info
    port = info.port
    with _session(fake_entra) as session:
        resp = session.get(
            f"{info.authority_host}{info.tenant_id}/v2.0/.well-known/openid-configuration",
            headers={"Host": f"localhost:{port}"},
            timeout=TIMEOUT,
        )
    doc = resp.json()
    assert doc["token_endpoint"] == f"https://localhost:{port}/{info.tenant_id}/oauth2/v2.0/token"
    assert doc["authorization_endpoint"].startswith("https://localhost:")
    assert "private_key_jwt" in doc["token_endpoint_auth_methods_supported"]


def test_unknown_tenant(fake_entra: FakeEntra) -> None:
    info = fake_entra.info
    with _session(fake_entra) as session:
        resp = session.get(
            f"{info.authority_host}nope/v2.0/.well-known/openid-configuration", timeout=TIMEOUT
        )
    _assert_entra_error(resp, 400, 90002, "invalid_tenant")
    url = f"{info.authority_host}nope/oauth2/v2.0/token"
    _assert_entra_error(_post(fake_entra, _form(fake_entra), url), 400, 90002, "invalid_request")


def _tampered(token: str) -> str:
    head, body, sig = token.split(".")
    return f"{head}.{body}.{sig[:-4]}{'AAAA' if not sig.endswith('AAAA') else 'BBBB'}"


# (form overrides, expected AADSTS code, expected error)
ErrorCase = tuple[Callable[[FakeEntra], dict[str, str | None]], int, str]

ERROR_CASES: dict[str, ErrorCase] = {
    "missing grant_type": (lambda e: {"grant_type": None}, 900144, "invalid_request"),
    "other grant_type": (lambda e: {"grant_type": "password"}, 70003, "unsupported_grant_type"),
    "missing client_id": (lambda e: {"client_id": None}, 900144, "invalid_request"),
    "unknown client": (lambda e: {"client_id": "nope"}, 700016, "unauthorized_client"),
    "missing scope": (lambda e: {"scope": None}, 900144, "invalid_request"),
    "missing assertion": (lambda e: {"client_assertion": None}, 7000218, "invalid_client"),
    "wrong assertion type": (
        lambda e: {"client_assertion_type": "urn:x"},
        7000218,
        "invalid_client",
    ),
    "malformed assertion": (lambda e: {"client_assertion": "a.b.c"}, 50027, "invalid_request"),
    "bad signature": (
        lambda e: {"client_assertion": _tampered(Path(e.info.token_file).read_text())},
        700027,
        "invalid_client",
    ),
    "foreign key": (
        lambda e: {
            "client_assertion": mint_service_account_token(
                SigningKey.generate(),
                e.info.service_account_issuer,
                e.info.service_account_subject,
            )
        },
        700027,
        "invalid_client",
    ),
    "expired assertion": (
        lambda e: {"client_assertion": e.mint_assertion(issued_at=time.time() - 7200)},
        700024,
        "invalid_client",
    ),
    "assertion not yet valid": (
        lambda e: {"client_assertion": e.mint_assertion(issued_at=time.time() + 600)},
        700024,
        "invalid_client",
    ),
    "other issuer": (
        lambda e: {"client_assertion": e.mint_assertion(issuer="https://elsewhere.test/x")},
        700211,
        "invalid_client",
    ),
    "other subject": (
        lambda e: {"client_assertion": e.mint_assertion(subject="system:serviceaccount:a:b")},
        700213,
        "invalid_client",
    ),
    "other audience": (
        lambda e: {"client_assertion": e.mint_assertion(audience="api://other")},
        700212,
        "invalid_client",
    ),
    "two scopes": (
        lambda e: {"scope": f"{VAULT}/.default https://storage.azure.com/.default"},
        70011,
        "invalid_scope",
    ),
    "scope without .default": (
        lambda e: {"scope": f"{VAULT}/user_impersonation"},
        1002012,
        "invalid_scope",
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_token_errors_are_entra_shaped(fake_entra: FakeEntra, case: str) -> None:
    overrides, code, error = ERROR_CASES[case]
    form = _form(fake_entra, **overrides(fake_entra))
    resp = _post(fake_entra, form)
    _assert_entra_error(resp, 400, code, error)
    assertion = form.get("client_assertion", "")
    if assertion:
        assert assertion not in resp.text
        for segment in assertion.split("."):
            assert len(segment) < 8 or segment not in resp.text
    assert fake_entra.stats()["token_requests"]["by_outcome"] == {f"AADSTS{code}": 1}


def test_no_federated_credentials_at_all(fake_entra: FakeEntra) -> None:
    fake_entra.set_federated_credentials([])
    resp = _post(fake_entra, _form(fake_entra))
    _assert_entra_error(resp, 400, 70021, "invalid_request")
    assert "Assertion Subject: 'system:serviceaccount:default:workload'" in resp.text


def test_unknown_resource(fake_entra: FakeEntra) -> None:
    fake_entra.behave(unknown_resources=["https://unknown.example"])
    resp = _post(fake_entra, _form(fake_entra, scope="https://unknown.example/.default"))
    _assert_entra_error(resp, 400, 500011, "invalid_resource")
    assert _post(fake_entra, _form(fake_entra)).status_code == 200


def test_a_credential_propagates_after_its_delay(fake_entra: FakeEntra) -> None:
    """Rejected with AADSTS70021 until `effective_after` has passed, then honoured."""
    fake_entra.set_federated_credentials([fake_entra.matching_credential(effective_after=1.5)])
    _assert_entra_error(_post(fake_entra, _form(fake_entra)), 400, 70021, "invalid_request")
    time.sleep(1.6)
    assert _post(fake_entra, _form(fake_entra)).status_code == 200


def test_issuer_unreachable_mode_answers_aadsts90061(fake_entra: FakeEntra) -> None:
    fake_entra.behave(mode="issuer_unreachable", count=1)
    resp = _post(fake_entra, _form(fake_entra))
    _assert_entra_error(resp, 400, 90061, "invalid_request")
    assert "\r\nTrace ID: " in resp.json()["error_description"]
    assert _post(fake_entra, _form(fake_entra)).status_code == 200


def test_reset_restores_credentials_and_behaviour(fake_entra: FakeEntra) -> None:
    fake_entra.set_federated_credentials([])
    fake_entra.behave(mode="fail", delay=0.01)
    fake_entra.reset()
    assert _post(fake_entra, _form(fake_entra)).status_code == 200
    assert fake_entra.stats()["token_requests"]["total"] == 1


# -- behaviour knobs ---------------------------------------------------------------------


def test_throttle_gives_429_with_retry_after(fake_entra: FakeEntra) -> None:
    fake_entra.behave(mode="throttle", retry_after=7, count=2)
    for _ in range(2):
        resp = _post(fake_entra, _form(fake_entra))
        _assert_entra_error(resp, 429, 90055, "temporarily_unavailable")
        assert resp.headers["Retry-After"] == "7"
    assert _post(fake_entra, _form(fake_entra)).status_code == 200
    outcomes = fake_entra.stats()["token_requests"]["by_outcome"]
    assert outcomes == {"throttled": 2, "success": 1}


def test_msal_surfaces_throttling(fake_entra: FakeEntra) -> None:
    fake_entra.behave(mode="throttle", retry_after=3)
    result = _msal_app(fake_entra).acquire_token_for_client([f"{VAULT}/.default"])
    assert result.get("error") == "temporarily_unavailable"
    assert result["error_codes"] == [90055]


def test_fail_mode_uses_the_configured_status(fake_entra: FakeEntra) -> None:
    fake_entra.behave(mode="fail", status=502)
    resp = _post(fake_entra, _form(fake_entra))
    _assert_entra_error(resp, 502, 90033, "temporarily_unavailable")
    assert fake_entra.stats()["token_requests"]["by_outcome"] == {"failed": 1}


def test_delay(fake_entra: FakeEntra) -> None:
    fake_entra.behave(delay=0.5)
    started = time.monotonic()
    assert _post(fake_entra, _form(fake_entra)).status_code == 200
    assert 0.5 <= time.monotonic() - started < TIMEOUT


def test_token_lifetime_knob(fake_entra: FakeEntra) -> None:
    fake_entra.behave(token_lifetime=120)
    body = _post(fake_entra, _form(fake_entra)).json()
    assert body["expires_in"] == body["ext_expires_in"] == 120
    claims = _claims(body["access_token"])
    assert claims["exp"] - claims["iat"] == 120


@pytest.mark.parametrize(
    "knobs",
    [{"mode": "bogus"}, {"delay": -1}, {"status": 404}, {"nope": 1}, {"unknown_resources": "x"}],
)
def test_bad_knobs_are_rejected(fake_entra: FakeEntra, knobs: dict[str, Any]) -> None:
    with pytest.raises(FakeEntraError, match="400"):
        fake_entra.behave(**knobs)


async def test_stats_are_exact_under_concurrency(fake_entra: FakeEntra) -> None:
    """50 overlapping requests (a delay keeps them in flight together) are all counted."""
    fake_entra.behave(delay=0.3)
    good = _form(fake_entra)
    unknown = _form(fake_entra, client_id="nope")
    other_scope = _form(fake_entra, scope="https://storage.azure.com/.default")
    forms = [good] * 30 + [unknown] * 12 + [other_scope] * 8
    ctx = ssl.create_default_context(cafile=fake_entra.info.ca_bundle)
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(ssl=ctx, limit=100)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def post(form: dict[str, str]) -> int:
            async with session.post(fake_entra.token_endpoint, data=form) as resp:
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(*(post(f) for f in forms))
    assert sorted(statuses) == [200] * 38 + [400] * 12

    stats = (await asyncio.to_thread(fake_entra.stats))["token_requests"]
    assert stats["total"] == 50
    assert stats["by_outcome"] == {"success": 38, "AADSTS700016": 12}
    assert stats["by_client_id"] == {fake_entra.info.client_id: 38, "nope": 12}
    assert stats["by_scope"] == {
        f"{VAULT}/.default": 42,
        "https://storage.azure.com/.default": 8,
    }
    assert stats["in_flight"] == 0
    assert 1 < stats["max_in_flight"] <= 50


# -- the projected service-account token -------------------------------------------------


def test_rotation_swaps_the_data_symlink(fake_entra: FakeEntra) -> None:
    path = Path(fake_entra.info.token_file)
    directory = path.parent
    assert os.readlink(path) == "..data/azure-identity-token"
    before_target = os.readlink(directory / "..data")
    before = path.read_text()
    with open(path) as held:  # an open file keeps the old inode: why readers re-resolve
        result = fake_entra.rotate(lifetime=600)
        assert held.read() == before
    assert result["token_file"] == str(path)
    after_target = os.readlink(directory / "..data")
    after = path.read_text()
    assert after != before and after_target != before_target
    assert not (directory / before_target).exists()
    assert os.readlink(path) == "..data/azure-identity-token"
    claims = _claims(after)
    assert claims["exp"] - claims["iat"] == 600 and claims["exp"] == result["expires_on"]
    assert claims["aud"] == ["api://AzureADTokenExchange"]
    assert "access_token" in _post(fake_entra, _form(fake_entra)).json()


def test_rotation_to_another_subject(fake_entra: FakeEntra) -> None:
    fake_entra.rotate(subject="system:serviceaccount:other:sa")
    _assert_entra_error(_post(fake_entra, _form(fake_entra)), 400, 700213, "invalid_client")
    fake_entra.reset()  # rotates back to the original subject
    assert _claims(Path(fake_entra.info.token_file).read_text())["sub"].endswith("default:workload")


def test_atomic_writer_never_shows_a_partial_token(tmp_path: Path) -> None:
    key = SigningKey.generate()
    tokens = [mint_service_account_token(key, "https://i.test", "system:serviceaccount:a:b")]
    tokens += [mint_service_account_token(key, "https://i.test", "system:serviceaccount:a:c")]
    path = write_projected_token(tmp_path, "token", tokens[0])
    seen: set[str] = set()

    def read() -> None:
        # As with kubelet: a read that resolved `..data` just before the swap finds the old
        # directory gone; the next read sees the new token (the proxy's reader retries,
        # tests/test_assertion.py). Never a partial token, though.
        with contextlib.suppress(FileNotFoundError):
            seen.add(path.read_text())

    problems, _ = read_while_rotating(tmp_path, "token", tokens, 200, read)
    assert not problems
    assert seen <= set(tokens)
    entries = sorted(p.name for p in tmp_path.iterdir())
    assert len(entries) == 3 and entries[0].startswith("..2") and entries[1:] == ["..data", "token"]


async def test_in_process_issuer_rotates_in_background(tmp_path: Path) -> None:
    async with LocalIssuer.start(tmp_path, sa_token_lifetime=2) as issuer:
        env = issuer.proxy_environment()
        assert env == {
            "AZURE_AUTHORITY_HOST": issuer.authority_host,
            "AZURE_TENANT_ID": issuer.tenant_id,
            "AZURE_CLIENT_ID": issuer.client_id,
            "AZURE_FEDERATED_TOKEN_FILE": issuer.token_file,
            "REQUESTS_CA_BUNDLE": issuer.ca_bundle,
        }
        assert issuer.authority_host.startswith("https://127.0.0.1:")
        strict = ssl.create_default_context(cafile=issuer.ca_bundle)
        strict.verify_flags |= ssl.VERIFY_X509_STRICT  # the default from Python 3.13
        connector = aiohttp.TCPConnector(ssl=strict)
        timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            session.get(f"{issuer.control_url}/stats") as resp,
        ):
            assert resp.status == 200
        path = Path(issuer.token_file)
        first = path.read_text()
        deadline = time.monotonic() + 5
        while path.read_text() == first:
            assert time.monotonic() < deadline, "token was not rotated at 80% of its lifetime"
            await asyncio.sleep(0.1)
        assert _claims(path.read_text())["exp"] > _claims(first)["exp"]


# -- PKI ---------------------------------------------------------------------------------


def test_certificate_names(tmp_path: Path) -> None:
    files = generate_tls_files(tmp_path, hosts=["issuer.test"], ips=["10.200.0.1"])
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "issuer.test"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("10.200.0.1"),
    }
    assert oct(files.key.stat().st_mode & 0o777) == "0o600"
    assert not any("PRIVATE" in p.read_text() for p in (files.ca_bundle, files.cert))


@pytest.fixture
def cli_issuer(tmp_path: Path) -> Iterator[FakeEntra]:
    with FakeEntra(tmp_path, extra_args=["--tenant-id", "t-1", "--client-id", "c-1"]) as entra:
        yield entra


def test_cli_json_line_and_ids(cli_issuer: FakeEntra) -> None:
    info = cli_issuer.info
    assert (info.tenant_id, info.client_id, info.extra_client_ids) == ("t-1", "c-1", ())
    assert info.control_url == f"{info.authority_host}_control"
    assert Path(info.ca_bundle).is_file() and Path(info.token_file).is_symlink()
    served = json.loads(json.dumps(cli_issuer._call("GET", "info")))
    assert LocalIssuer.from_json(served) == info
