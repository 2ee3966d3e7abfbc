"""Identity selectors through the proxy's server, in process: `object_id`, `msi_res_id`,
`mi_res_id` and `msi-res-id` are served as the identity whose tokens carry those ids, or as
mapped."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import requests

from harness.fake_entra import FakeEntra
from proxy.config import IDENTITIES_ENV
from tests.support.fixtures import SECOND_CLIENT_ID
from tests.support.in_process import InProcessProxy, running_in_process
from tests.support.jwt_claims import claims

ARM = "https://management.azure.com/"
VAULT = "https://vault.azure.net"
META = {"Metadata": "true"}
UNKNOWN_OBJECT_ID = "7e3a1c55-0c4f-4c41-9a27-5d0c2b7f1e99"
UNREVEALED_RESOURCE_ID = (
    "/subscriptions/1d2c3b4a-0000-4000-8000-000000000000/resourceGroups/legacy/providers/"
    "Microsoft.ManagedIdentity/userAssignedIdentities/not-in-any-token"
)


def get(url: str, **kw: Any) -> requests.Response:
    return requests.get(url, headers=META, timeout=20, **kw)


def token_of(response: requests.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def exchanges(fake_entra: FakeEntra) -> dict[str, int]:
    by_client: dict[str, int] = fake_entra.stats()["token_requests"]["by_client_id"]
    return by_client


def arm_spelling(resource_id: str) -> str:
    """How ARM callers write the id Entra puts in `xms_mirid`: other case, same id."""
    return resource_id.replace("/resourcegroups/", "/resourceGroups/").replace(
        "/subscriptions/", "/SUBSCRIPTIONS/"
    )


def test_object_id_is_resolved_by_the_exchange_that_serves_it(
    proxy: InProcessProxy, fake_entra: FakeEntra
) -> None:
    body = token_of(get(proxy.url(ARM, object_id=fake_entra.object_id())))
    assert body["client_id"] == fake_entra.info.client_id
    issued = claims(body["access_token"])
    assert issued["oid"] == fake_entra.object_id() and issued["aud"] == ARM
    plain = token_of(get(proxy.url(ARM)))
    assert plain["access_token"] == body["access_token"]
    assert exchanges(fake_entra) == {fake_entra.info.client_id: 1}
    learned = [line for line in proxy.logs() if line["event"] == "learned identity"]
    assert [line["object_id"] for line in learned] == [fake_entra.object_id()]


@pytest.mark.parametrize("param", ["msi_res_id", "mi_res_id", "msi-res-id"])
def test_resource_ids_select_case_insensitively(
    proxy: InProcessProxy, fake_entra: FakeEntra, param: str
) -> None:
    assert get(proxy.url(VAULT)).status_code == 200  # any exchange teaches the ids
    selected = arm_spelling(fake_entra.resource_id())
    body = token_of(get(proxy.url(VAULT, **{param: selected})))
    assert body["client_id"] == fake_entra.info.client_id
    assert claims(body["access_token"])["xms_mirid"] == fake_entra.resource_id()
    assert exchanges(fake_entra) == {fake_entra.info.client_id: 1}


def test_a_configured_identity_is_learned_on_demand(fake_entra: FakeEntra, tmp_path: Path) -> None:
    with running_in_process(
        fake_entra.env(), tmp_path, [f"--identity={SECOND_CLIENT_ID}"]
    ) as proxy:
        body = token_of(get(proxy.url(ARM, object_id=fake_entra.object_id(SECOND_CLIENT_ID))))
        assert body["client_id"] == SECOND_CLIENT_ID
        assert claims(body["access_token"])["appid"] == SECOND_CLIENT_ID
        default = token_of(get(proxy.url(ARM)))  # learned on the way, and cached
        assert default["client_id"] == fake_entra.info.client_id
    assert exchanges(fake_entra) == {fake_entra.info.client_id: 1, SECOND_CLIENT_ID: 1}


def test_mappings_cover_ids_that_tokens_do_not_reveal(
    fake_entra: FakeEntra, tmp_path: Path
) -> None:
    mapped_object_id = "5a5a5a5a-6b6b-4c7c-8d8d-9e9e9e9e9e9e"
    env = {**fake_entra.env(), IDENTITIES_ENV: f"{SECOND_CLIENT_ID},object_id={mapped_object_id}"}
    args = [f"--identity={fake_entra.info.client_id},resource_id={UNREVEALED_RESOURCE_ID}"]
    with running_in_process(env, tmp_path, args) as proxy:
        by_object = token_of(get(proxy.url(ARM, object_id=mapped_object_id.upper())))
        assert by_object["client_id"] == SECOND_CLIENT_ID
        by_resource = token_of(get(proxy.url(ARM, mi_res_id=UNREVEALED_RESOURCE_ID.lower())))
        assert by_resource["client_id"] == fake_entra.info.client_id
    assert exchanges(fake_entra) == {fake_entra.info.client_id: 1, SECOND_CLIENT_ID: 1}


def test_a_selector_matching_nobody_is_identity_not_found_until_learned(
    proxy: InProcessProxy, fake_entra: FakeEntra
) -> None:
    second_oid = fake_entra.object_id(SECOND_CLIENT_ID)
    for selector in ({"object_id": UNKNOWN_OBJECT_ID}, {"object_id": second_oid}):
        response = get(proxy.url(ARM, **selector))
        assert (response.status_code, response.reason) == (400, "Bad Request")
        description = response.json()["error_description"]
        assert description.startswith("Identity not found")
        assert fake_entra.info.client_id in description, "names what was checked"
    assert exchanges(fake_entra) == {fake_entra.info.client_id: 1}
    # A request by client id teaches the proxy that identity's ids: the same query that
    # was not found a moment ago now means that identity.
    assert token_of(get(proxy.url(VAULT, client_id=SECOND_CLIENT_ID)))
    body = token_of(get(proxy.url(ARM, object_id=second_oid)))
    assert body["client_id"] == SECOND_CLIENT_ID
    assert get(proxy.url(ARM, object_id=UNKNOWN_OBJECT_ID)).status_code == 400


def test_azure_cli_245_retrying_a_client_id_as_object_id(
    proxy: InProcessProxy, fake_entra: FakeEntra
) -> None:
    """`az login --identity --username ID` sends ID as client_id; on a 400 whose reason is
    Bad Request it sends the same ID as object_id."""
    given = fake_entra.object_id()
    first = get(proxy.url(ARM, client_id=given))
    assert (first.status_code, first.reason) == (400, "Bad Request")
    assert "Identity not found" in first.json()["error_description"]
    body = token_of(get(proxy.url(ARM, object_id=given)))
    assert body["client_id"] == fake_entra.info.client_id


def test_an_outage_while_learning_is_503_then_resolves(
    proxy: InProcessProxy, fake_entra: FakeEntra
) -> None:
    fake_entra.behave(mode="fail", status=503, retry_after=1)
    response = get(proxy.url(ARM, object_id=fake_entra.object_id()))
    assert response.status_code == 503, "an outage is never a final 400"
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert "Identity not found" not in response.text
    fake_entra.behave(mode="normal")
    deadline = time.monotonic() + 10
    while (response := get(proxy.url(ARM, object_id=fake_entra.object_id()))).status_code != 200:
        assert response.status_code == 503 and time.monotonic() < deadline
        time.sleep(0.5)
    assert token_of(response)["client_id"] == fake_entra.info.client_id


def test_two_identity_parameters_naming_different_ids_are_refused(
    proxy: InProcessProxy, fake_entra: FakeEntra
) -> None:
    response = get(proxy.url(ARM, client_id=fake_entra.info.client_id, object_id=UNKNOWN_OBJECT_ID))
    assert response.status_code == 400
    assert "client_id and object_id" in response.json()["error_description"]
    assert exchanges(fake_entra) == {}
