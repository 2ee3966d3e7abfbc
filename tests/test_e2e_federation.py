"""Federation failures through the real proxy process, from the fake Entra ID's real
error answers: what the app gets inside and after the propagation window (a short
`--propagation-window`), how often Entra is asked meanwhile, and the log line.

Then the point of it all: real SDKs started while the federated credential is not yet
effective get their token, without a restart, once it "propagates".
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.identity import ManagedIdentityCredential

from harness.fake_entra import FakeEntra
from harness.proxy_process import ProxyProcess, running_proxy
from tests.support.jwt_claims import claims
from tests.support.legacy_sdks import AZURE_IDENTITY_1_5, run_old

ARM = "https://management.azure.com/"
META = {"Metadata": "true"}
WINDOW = 3.0
POLL = 5.0  # CachePolicy.propagation_poll


def entra_calls(entra: FakeEntra) -> int:
    total: int = entra.stats()["token_requests"]["total"]
    return total


def ask(proxy: ProxyProcess) -> requests.Response:
    return requests.get(proxy.url(ARM), headers=META, timeout=30)


def token_file(tmp_path: Path, token: str) -> str:
    path = tmp_path / "azure-identity-token"
    path.write_text(token)
    return str(path)


def no_credential(entra: FakeEntra, tmp_path: Path) -> dict[str, str]:
    entra.set_federated_credentials([])
    return entra.env()


def unknown_client(entra: FakeEntra, tmp_path: Path) -> dict[str, str]:
    return {**entra.env(), "AZURE_CLIENT_ID": str(uuid.uuid4())}


def not_yet_valid(entra: FakeEntra, tmp_path: Path) -> dict[str, str]:
    minted = entra.mint_assertion(issued_at=time.time() + 600)
    return {**entra.env(), "AZURE_FEDERATED_TOKEN_FILE": token_file(tmp_path, minted)}


def bad_signature(entra: FakeEntra, tmp_path: Path) -> dict[str, str]:
    header, payload, signature = entra.mint_assertion().split(".")
    forged = ".".join((header, payload, signature[::-1]))
    return {**entra.env(), "AZURE_FEDERATED_TOKEN_FILE": token_file(tmp_path, forged)}


def issuer_unreachable(entra: FakeEntra, tmp_path: Path) -> dict[str, str]:
    entra.behave(mode="issuer_unreachable")
    return entra.env()


Setup = Callable[[FakeEntra, Path], dict[str, str]]
FINAL_AT_ONCE: list[tuple[str, Setup, tuple[str, ...], str]] = [
    ("unknown_client", unknown_client, ("700016",), "azure.workload.identity/client-id"),
    ("assertion_time", not_yet_valid, ("700024",), "node's clock"),
    ("assertion_rejected", bad_signature, ("700027", "50027"), "JWKS"),
    ("issuer_unreachable", issuer_unreachable, ("90061",), "oidcIssuerProfile.issuerUrl"),
]


def log_lines(proxy: ProxyProcess, event: str) -> list[dict[str, Any]]:
    return [line for line in proxy.logs() if line["event"] == event]


def test_no_matching_credential_is_503_inside_the_window_then_400_explained(
    fake_entra: FakeEntra, tmp_path: Path
) -> None:
    env = no_credential(fake_entra, tmp_path)
    args = [f"--propagation-window={WINDOW}"]
    with running_proxy(env, tmp_path, args) as proxy:
        inside = ask(proxy)
        assert inside.status_code == 503
        assert inside.headers["Retry-After"] == "5"
        body = inside.json()
        assert body["error"] == "temporarily_unavailable"
        assert "not effective yet" in body["error_description"]
        assert "AADSTS70021" in body["error_description"]
        for _ in range(5):  # an app retrying at once: answered from the hold
            assert ask(proxy).status_code == 503
        assert entra_calls(fake_entra) == 1
        time.sleep(POLL + 0.2)  # past the window and the hold
        after = ask(proxy)
        assert entra_calls(fake_entra) == 3, "one exchange, one retry a second later"
        proxy.stop()
        pending = log_lines(proxy, "federated credential is not effective yet")
        final = log_lines(proxy, "token exchange failed")
    assert after.status_code == 400
    text = after.json()["error_description"]
    info = fake_entra.info
    for part in (
        "AADSTS70021",
        f"iss={info.service_account_issuer}",
        f"sub={info.service_account_subject}",
        "aud=api://AzureADTokenExchange",
        info.client_id,
        info.tenant_id,
        f"--issuer {info.service_account_issuer} --subject {info.service_account_subject} "
        "--audience api://AzureADTokenExchange",
    ):
        assert part in text
    assert len(pending) == 1 and pending[0]["aadsts"] == "70021"
    assert final[-1]["cause"] == "no_matching_credential"
    assert text == "Identity not found: " + final[-1]["reason"]  # the phrase SDKs look for
    assert "eyJ" not in proxy.log_text()


@pytest.mark.parametrize(
    ("cause", "setup", "codes", "fix"), FINAL_AT_ONCE, ids=[c[0] for c in FINAL_AT_ONCE]
)
def test_other_causes_are_400_explained_inside_and_after_the_window(
    cause: str,
    setup: Setup,
    codes: tuple[str, ...],
    fix: str,
    fake_entra: FakeEntra,
    tmp_path: Path,
) -> None:
    env = setup(fake_entra, tmp_path)
    with running_proxy(env, tmp_path, [f"--propagation-window={WINDOW}"]) as proxy:
        inside = ask(proxy)
        assert entra_calls(fake_entra) == 2, "retried once before it counts"
        time.sleep(WINDOW + 0.2)
        after = ask(proxy)
        assert entra_calls(fake_entra) == 2, "a rejection is remembered briefly"
        proxy.stop()
        lines = log_lines(proxy, "token exchange failed")
    for answer in (inside, after):
        assert answer.status_code == 400
        assert answer.json()["error"] == "invalid_request"
    text = inside.json()["error_description"]
    assert any(f"AADSTS{code}" in text for code in codes)
    assert fix in text and "Fix: " in text
    assert after.json()["error_description"] == text
    assert lines[-1]["cause"] == cause and lines[-1]["aadsts"] in codes
    assert "eyJ" not in proxy.log_text()


def test_metrics_count_federation_failures_by_cause(fake_entra: FakeEntra, tmp_path: Path) -> None:
    env = no_credential(fake_entra, tmp_path)
    with running_proxy(env, tmp_path) as proxy:
        assert ask(proxy).status_code == 503
        metrics = proxy.metrics()
        status = requests.get(f"http://127.0.0.1:{proxy.port}/status", timeout=5).json()
    labels = 'cause="no_matching_credential",phase="propagating"'
    assert f"imds_proxy_federation_failures_total{{{labels}}} 1.0" in metrics
    assert status["ready"] is True
    assert status["last_failure"]["kind"] == "federation_pending"
    assert status["last_failure"]["cause"] == "no_matching_credential"
    fix = status["last_failure"]["fix"]
    assert fix.startswith("create the federated credential with exactly these values: az ")
    assert f"--subject {fake_entra.info.service_account_subject} " in fix
    assert status["federation_failures"] == [
        {"cause": "no_matching_credential", "phase": "propagating", "count": 1}
    ]


PROPAGATES_AFTER = 4.0


@pytest.fixture
def propagating(fake_entra: FakeEntra, tmp_path: Path) -> Any:
    """A running proxy; its credential, created now, becomes effective shortly."""
    with running_proxy(fake_entra.env(), tmp_path) as proxy:
        # Created once the proxy runs, so a slow start cannot outlast the propagation.
        fake_entra.set_federated_credentials(
            [fake_entra.matching_credential(effective_after=PROPAGATES_AFTER)]
        )
        yield proxy


def test_azure_identity_gets_its_token_once_the_credential_propagates(
    propagating: ProxyProcess, fake_entra: FakeEntra, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", propagating.base)
    for name in ("MSI_ENDPOINT", "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "AZURE_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AZURE_FEDERATED_TOKEN_FILE", raising=False)
    monkeypatch.delenv("AZURE_TENANT_ID", raising=False)
    token = ManagedIdentityCredential().get_token(ARM + ".default")
    assert claims(token.token)["appid"] == fake_entra.info.client_id
    propagating.stop()  # flushes the request lines
    statuses = [line["status"] for line in log_lines(propagating, "received token request")]
    assert statuses[0] == 503 and statuses[-1] == 200
    assert fake_entra.stats()["token_requests"]["by_outcome"]["AADSTS70021"] >= 1


def test_azure_identity_1_5_gets_its_token_once_the_credential_propagates(
    old_sdks: dict[str, Path],
    propagating: ProxyProcess,
    fake_entra: FakeEntra,
) -> None:
    result = run_old(old_sdks["azure-identity"], AZURE_IDENTITY_1_5, propagating, ARM)
    assert claims(str(result["token"]))["appid"] == fake_entra.info.client_id
    propagating.stop()  # flushes the request lines
    statuses = [line["status"] for line in log_lines(propagating, "received token request")]
    assert 503 in statuses and statuses[-1] == 200
    assert fake_entra.stats()["token_requests"]["by_outcome"]["AADSTS70021"] >= 1
