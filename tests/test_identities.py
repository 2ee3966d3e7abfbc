"""Identity selectors: ids learned from tokens, configured mappings, and resolution."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from proxy.failures import Failure
from proxy.identities import MAX_LEARNED, IdentityDirectory, identity_claims
from proxy.identity_ids import IdentitySpec
from proxy.query import IdentityQuery, Selector, TokenRequest
from proxy.tokens.errors import EntraRejected, EntraThrottled, EntraUnavailable, TokenError
from proxy.tokens.model import AccessToken, TokenKey
from tests.support.jwt_claims import unsigned

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
DEFAULT = "11111111-2222-3333-4444-555555555555"
MAPPED = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
RESOURCE = "https://vault.azure.net"
MIRID = (
    "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/"
)


def object_id(client_id: str) -> str:
    return "0b" + client_id[2:]


def resource_id(client_id: str) -> str:
    return MIRID + "id-" + client_id[:8]


def token_for(client_id: str, **claims: Any) -> AccessToken:
    claims = {"oid": object_id(client_id), "xms_mirid": resource_id(client_id), **claims}
    return AccessToken(unsigned(claims), "Bearer", 2e9, 2e9, 1e9, 1e9)


class FakeEntra:
    """The cache's `get` as the directory sees it: a token per key, or a failure."""

    def __init__(self, directory: IdentityDirectory) -> None:
        self.directory = directory
        self.calls: list[TokenKey] = []
        self.failures: dict[str, TokenError] = {}

    async def fetch(self, key: TokenKey) -> AccessToken:
        self.calls.append(key)
        if key.client_id in self.failures:
            raise self.failures[key.client_id].again()
        token = token_for(key.client_id)
        self.directory.learn(key.client_id, token)
        return token


def query(kind: str, value: str, param: str | None = None) -> IdentityQuery:
    return IdentityQuery(RESOURCE, TENANT, Selector(kind, param or kind, value))


async def resolve(
    directory: IdentityDirectory, wanted: IdentityQuery, entra: FakeEntra
) -> TokenRequest:
    request = await directory.resolve(wanted, entra.fetch)
    assert isinstance(request, TokenRequest), request
    return request


async def refuse(directory: IdentityDirectory, wanted: IdentityQuery, entra: FakeEntra) -> Failure:
    failure = await directory.resolve(wanted, entra.fetch)
    assert isinstance(failure, Failure), failure
    return failure


async def test_a_selector_is_resolved_by_one_exchange_for_the_default_identity() -> None:
    directory = IdentityDirectory(DEFAULT, [])
    entra = FakeEntra(directory)
    request = await resolve(directory, query("object_id", object_id(DEFAULT)), entra)
    assert request.key == TokenKey(TENANT, DEFAULT, RESOURCE + "/.default")
    assert request.resource == RESOURCE
    assert entra.calls == [request.key], "the exchange was for the requested resource"
    again = await resolve(directory, query("object_id", object_id(DEFAULT).upper()), entra)
    assert again == request
    assert len(entra.calls) == 1, "learned once, then known"


async def test_resource_ids_compare_case_insensitively_as_arm_does() -> None:
    directory = IdentityDirectory(DEFAULT, [])
    entra = FakeEntra(directory)
    arm_spelling = resource_id(DEFAULT).replace("resourcegroups", "resourceGroups").upper()
    request = await resolve(directory, query("resource_id", arm_spelling, "mi_res_id"), entra)
    assert request.key.client_id == DEFAULT


async def test_mapped_identities_are_learned_too_and_mappings_need_no_exchange() -> None:
    spec = IdentitySpec(MAPPED, resource_id=MIRID + "not-in-any-token")
    directory = IdentityDirectory(DEFAULT, [spec])
    entra = FakeEntra(directory)
    mapped = await resolve(directory, query("resource_id", spec.resource_id or ""), entra)
    assert mapped.key.client_id == MAPPED and entra.calls == []
    learned = await resolve(directory, query("object_id", object_id(MAPPED)), entra)
    assert learned.key.client_id == MAPPED
    assert {k.client_id for k in entra.calls} == {DEFAULT, MAPPED}


async def test_tokens_of_any_exchange_teach_their_ids() -> None:
    directory = IdentityDirectory(None, [])
    directory.learn(MAPPED, token_for(MAPPED))  # a request that named client_id=MAPPED
    entra = FakeEntra(directory)
    request = await resolve(directory, query("object_id", object_id(MAPPED)), entra)
    assert request.key.client_id == MAPPED and entra.calls == []


async def test_an_unknown_selector_is_identity_not_found_after_learning_all() -> None:
    directory = IdentityDirectory(DEFAULT, [IdentitySpec(MAPPED)])
    entra = FakeEntra(directory)
    unknown = "99999999-8888-4777-8666-555555555555"
    failure = await refuse(directory, query("object_id", unknown), entra)
    assert failure.status == 400
    assert failure.description.startswith("Identity not found")
    assert unknown in failure.description
    assert DEFAULT in failure.description and MAPPED in failure.description
    await refuse(directory, query("object_id", unknown), entra)
    assert len(entra.calls) == 2, "each configured identity is learned once"


async def test_an_identity_entra_rejects_is_named_and_asked_again_next_time() -> None:
    directory = IdentityDirectory(DEFAULT, [IdentitySpec(MAPPED)])
    entra = FakeEntra(directory)
    entra.failures[MAPPED] = EntraRejected("invalid_client", "AADSTS70021: no match", "70021", 400)
    failure = await refuse(directory, query("object_id", object_id(MAPPED)), entra)
    assert failure.status == 400
    assert f"{MAPPED} could not be asked: AADSTS70021" in failure.description
    del entra.failures[MAPPED]
    request = await resolve(directory, query("object_id", object_id(MAPPED)), entra)
    assert request.key.client_id == MAPPED


@pytest.mark.parametrize(
    ("failure", "status"),
    [(EntraUnavailable("down", retry_after=3.0), 503), (EntraThrottled("slow", 90.0), 429)],
)
async def test_a_transient_failure_while_learning_is_never_a_400(
    failure: TokenError, status: int
) -> None:
    directory = IdentityDirectory(DEFAULT, [])
    entra = FakeEntra(directory)
    entra.failures[DEFAULT] = failure
    answer = await refuse(directory, query("object_id", object_id(DEFAULT)), entra)
    assert answer.status == status
    assert 1 <= int(answer.retry_after_header() or 0) <= 60


async def test_a_match_beats_another_identitys_outage() -> None:
    directory = IdentityDirectory(DEFAULT, [IdentitySpec(MAPPED)])
    entra = FakeEntra(directory)
    entra.failures[DEFAULT] = EntraUnavailable("down")
    request = await resolve(directory, query("object_id", object_id(MAPPED)), entra)
    assert request.key.client_id == MAPPED


async def test_without_any_identity_a_selector_is_not_found_at_once() -> None:
    directory = IdentityDirectory(None, [])
    entra = FakeEntra(directory)
    failure = await refuse(directory, query("object_id", object_id(DEFAULT)), entra)
    assert failure.status == 400 and "checked: none" in failure.description
    assert entra.calls == []


def test_configured_mappings_win_over_what_a_token_claims() -> None:
    directory = IdentityDirectory(DEFAULT, [IdentitySpec(MAPPED, object_id=object_id(DEFAULT))])
    directory.learn(DEFAULT, token_for(DEFAULT))
    assert directory.find(Selector("object_id", "object_id", object_id(DEFAULT))) == MAPPED


def test_learning_is_bounded_beyond_the_configured_identities() -> None:
    directory = IdentityDirectory(DEFAULT, [])
    others = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(MAX_LEARNED + 5)]
    for client_id in others:
        directory.learn(client_id, token_for(client_id))
    directory.learn(DEFAULT, token_for(DEFAULT))
    assert len(directory.known) == MAX_LEARNED + 1
    assert directory.known[0] == DEFAULT


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        "a.b",
        "a.!!!.c",
        unsigned({"oid": 5, "xms_mirid": ["x"]}),
        unsigned({"oid": "not-a-guid", "xms_mirid": "rg/x"}),
        "e30." + base64.urlsafe_b64encode(b"[1, 2]").decode() + ".x",
    ],
)
def test_tokens_without_usable_claims_teach_nothing(token: str) -> None:
    assert identity_claims(token) == (None, None)


def test_only_oid_and_xms_mirid_are_read() -> None:
    claims = identity_claims(token_for(DEFAULT, appid=MAPPED).value)
    assert claims == (object_id(DEFAULT), resource_id(DEFAULT))
