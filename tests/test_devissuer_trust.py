"""The local issuer standing in for Entra ID in front of a real cluster: it trusts that
cluster's JWKS (file or URL) and a list of federated credentials, and checks assertions
against them exactly as it checks its own."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import msal
import pytest
import requests

from harness.background_server import POLL_INTERVAL
from harness.fake_entra import FakeEntra, FakeEntraError
from proxy.devissuer.satoken import mint_service_account_token
from proxy.devissuer.signing import SigningKey
from proxy.devissuer.trust import TrustError, parse_credential, parse_jwks

CLUSTER_ISSUER = "https://kubernetes.default.svc.cluster.local"
SUBJECT = "system:serviceaccount:shop:checkout"
VAULT = "https://vault.azure.net"


def _acquire(entra: FakeEntra, assertion: str) -> dict[str, object]:
    session = requests.Session()
    session.trust_env = False
    session.verify = entra.info.ca_bundle
    app = msal.ConfidentialClientApplication(
        entra.info.client_id,
        client_credential={"client_assertion": lambda: assertion},
        authority=f"{entra.info.authority_host}{entra.info.tenant_id}",
        instance_discovery=False,
        http_client=session,
        timeout=10,
    )
    result: dict[str, object] = app.acquire_token_for_client([f"{VAULT}/.default"])
    return result


def _credential_args(subject: str = SUBJECT) -> list[str]:
    return ["--federated-credential", f"issuer={CLUSTER_ISSUER},subject={subject}"]


@pytest.fixture(scope="module")
def cluster_key() -> SigningKey:
    return SigningKey.generate()


def test_credential_spec_parses_and_refuses() -> None:
    c = parse_credential(f"issuer={CLUSTER_ISSUER},subject={SUBJECT},audience=a,audience=b")
    assert (c.issuer, c.subject, c.audiences) == (CLUSTER_ISSUER, SUBJECT, ("a", "b"))
    assert parse_credential(f"issuer=x,subject={SUBJECT}").audiences == (
        "api://AzureADTokenExchange",
    )
    for bad in ("subject=s", "issuer=i", "issuer=i,subject=s,colour=blue", "issuer"):
        with pytest.raises(TrustError):
            parse_credential(bad)


def test_jwks_keeps_rsa_signature_keys_only(cluster_key: SigningKey) -> None:
    doc = {"keys": [cluster_key.jwk(), {"kty": "EC", "kid": "x"}, {"kty": "RSA"}]}
    assert list(parse_jwks(json.dumps(doc), "test")) == [cluster_key.kid]
    for bad in ("[]", "not json", '{"keys": []}'):
        with pytest.raises(TrustError):
            parse_jwks(bad, "test")


def test_a_cluster_token_is_exchanged_against_its_jwks_file(
    tmp_path: Path, cluster_key: SigningKey
) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(cluster_key.jwks()))
    args = ["--trust-jwks", str(jwks), *_credential_args()]
    with FakeEntra(tmp_path / "entra", extra_args=args) as entra:
        good = mint_service_account_token(cluster_key, CLUSTER_ISSUER, SUBJECT)
        assert "access_token" in _acquire(entra, good)
        # Another service account of the same cluster: no federated credential names it.
        other = mint_service_account_token(cluster_key, CLUSTER_ISSUER, "system:serviceaccount:a:b")
        assert "AADSTS700213" in str(_acquire(entra, other).get("error_description"))
        # Same claims, signed by a key the cluster never published.
        forged = mint_service_account_token(SigningKey.generate(), CLUSTER_ISSUER, SUBJECT)
        assert "AADSTS700027" in str(_acquire(entra, forged).get("error_description"))
        # The generated token no longer matches any credential: the list replaced it.
        own = Path(entra.info.token_file).read_text()
        assert "access_token" not in _acquire(entra, own)


class _JwksHandler(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def jwks_url(cluster_key: SigningKey) -> Iterator[str]:
    handler = type("Handler", (_JwksHandler,), {"body": json.dumps(cluster_key.jwks()).encode()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(POLL_INTERVAL,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/openid/v1/jwks"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_a_cluster_token_is_exchanged_against_its_jwks_url(
    tmp_path: Path, cluster_key: SigningKey, jwks_url: str
) -> None:
    args = ["--trust-jwks", jwks_url, *_credential_args()]
    with FakeEntra(tmp_path, extra_args=args) as entra:
        good = mint_service_account_token(cluster_key, CLUSTER_ISSUER, SUBJECT)
        assert "access_token" in _acquire(entra, good)


def test_an_unreadable_jwks_stops_the_start(tmp_path: Path) -> None:
    args = ["--trust-jwks", str(tmp_path / "missing.json"), *_credential_args()]
    entra = FakeEntra(tmp_path, extra_args=args, start_timeout=15)
    with pytest.raises(FakeEntraError, match="exited with 2"):
        entra.start()
    assert "cannot trust the external issuer" in entra.log_path.read_text()
