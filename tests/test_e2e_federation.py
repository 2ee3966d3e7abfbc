"""Federation failures through the real proxy process, from the fake Entra ID's real
error answers: what the app gets inside and after the propagation window (a short
`--propagation-window`, waited for in real time), how often Entra is asked meanwhile, and
the log line. The causes that are final at once are checked in process on a fake clock
(tests/inprocess/test_federation_window.py).

Then the point of it all: real SDKs started while the federated credential is not yet
effective get their token, without a restart, once it "propagates".
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.identity import ManagedIdentityCredential

from harness.fake_entra import FakeEntra
from harness.proxy_process import ProxyProcess, running_proxy
from tests.support.federation_cases import (
    ARM,
    POLL,
    WINDOW,
    ask,
    entra_calls,
    log_lines,
    no_credential,
)
from tests.support.jwt_claims import claims
from tests.support.legacy_sdks import AZURE_IDENTITY_1_5, run_old


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
