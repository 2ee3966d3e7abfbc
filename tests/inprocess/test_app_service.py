"""The App Service endpoint's refusals against the proxy's server, in process: a wrong or
missing secret, and no secret configured. SDKs calling it: tests/test_e2e_app_service.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from harness.fake_entra import FakeEntra
from tests.support.app_service import SECRET, token_lines
from tests.support.fixtures import SECOND_CLIENT_ID
from tests.support.in_process import InProcessProxy, running_in_process
from tests.support.jwt_claims import claims

VAULT = "https://vault.azure.net"


@pytest.fixture
def proxy(fake_entra: FakeEntra, tmp_path: Path) -> Iterator[InProcessProxy]:
    """Given the pod's secret as the injector gives it (env IDENTITY_HEADER)."""
    env = {**fake_entra.env(), "IDENTITY_HEADER": SECRET}
    with running_in_process(env, tmp_path) as server:
        yield server


@pytest.mark.parametrize(
    ("api_version", "header", "selector"),
    [("2019-08-01", "X-IDENTITY-HEADER", "client_id"), ("2017-09-01", "secret", "clientid")],
)
def test_wrong_or_missing_secret_is_refused(
    proxy: InProcessProxy, fake_entra: FakeEntra, api_version: str, header: str, selector: str
) -> None:
    url = f"{proxy.base}/msi/token?resource={VAULT}&api-version={api_version}"
    wrong = SECRET[:-1] + ("0" if SECRET[-1] != "0" else "1")
    other_header = "secret" if header != "secret" else "X-IDENTITY-HEADER"
    for headers in ({}, {header: wrong}, {header: ""}, {other_header: SECRET}):
        answer = requests.get(url, headers=headers, timeout=5)
        assert answer.status_code == 401, (headers, answer.text)
        assert "access_token" not in answer.text and SECRET not in answer.text
    no_resource = f"{proxy.base}/msi/token?api-version={api_version}"
    assert requests.get(no_resource, headers={header: wrong}, timeout=5).status_code == 401
    assert requests.get(no_resource, headers={header: SECRET}, timeout=5).status_code == 400
    user_assigned = url + f"&{selector}={SECOND_CLIENT_ID}"
    good = requests.get(user_assigned, headers={header: SECRET}, timeout=5)
    assert good.status_code == 200, good.text
    assert claims(good.json()["access_token"])["appid"] == SECOND_CLIENT_ID
    assert fake_entra.stats()["token_requests"]["total"] == 1, "refusals never reach Entra ID"
    proxy.stop()
    assert SECRET not in proxy.log_text() and wrong not in proxy.log_text()
    refused = [line for line in token_lines(proxy) if line["status"] == 401]
    assert len(refused) == 5 and {line["error"] for line in refused} == {"identity_header"}


def test_without_a_configured_secret_every_request_is_refused(
    fake_entra: FakeEntra, tmp_path: Path
) -> None:
    with running_in_process(fake_entra.env(), tmp_path) as proxy:
        # Nothing about the endpoint until something calls it (redirect-mode pods never do).
        assert not [line for line in proxy.logs() if "App Service" in str(line["event"])]
        for header in ("X-IDENTITY-HEADER", "secret"):
            version = "2019-08-01" if header != "secret" else "2017-09-01"
            url = f"{proxy.base}/msi/token/?resource={VAULT}&api-version={version}"
            for value in ("", "anything"):
                answer = requests.get(url, headers={header: value}, timeout=5)
                assert answer.status_code == 401
                assert "no identity header configured" in answer.text
    starts = [line for line in proxy.logs() if "refuses every request" in str(line["event"])]
    assert len(starts) == 1
