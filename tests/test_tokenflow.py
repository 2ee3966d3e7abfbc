"""The token flow in process: both protocols through one flow, one cache, one directory.

The App Service endpoint resolves `principal_id`/`object_id` and `mi_res_id` exactly as
IMDS resolves its selectors, answering in its own shape.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from proxy.appservice import AppServiceProtocol
from proxy.identities import IdentityDirectory
from proxy.identity_header import IdentityHeaderSecret
from proxy.identity_ids import IdentitySpec
from proxy.imds import TOKEN_PATH, ImdsProtocol
from proxy.tokenflow import TokenFlow, TokenProtocol
from proxy.tokens.cache import TokenCache
from proxy.tokens.errors import EntraUnavailable, TokenError
from proxy.tokens.model import AccessToken, TokenKey

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
DEFAULT = "11111111-2222-3333-4444-555555555555"
MAPPED = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
ARM = "https://management.azure.com/"
SECRET = "pod-uid-1234"
MIRID = "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/"


def object_id(client_id: str) -> str:
    return "0b" + client_id[2:]


def resource_id(client_id: str) -> str:
    return MIRID + "userAssignedIdentities/id-" + client_id[:8]


def jwt_for(client_id: str) -> str:
    claims = {"appid": client_id, "oid": object_id(client_id), "xms_mirid": resource_id(client_id)}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"e30.{payload}.c2ln"


class Entra:
    """The exchange the cache calls: a token whose claims name the identity, or a failure."""

    def __init__(self) -> None:
        self.calls: list[TokenKey] = []
        self.failures: dict[str, TokenError] = {}

    async def __call__(self, key: TokenKey) -> AccessToken:
        self.calls.append(key)
        if key.client_id in self.failures:
            raise self.failures[key.client_id].again()
        now = time.time()
        return AccessToken(jwt_for(key.client_id), "Bearer", now + 3600, now + 3600, now, now)


class Pod:
    """One flow answering both protocols, as the server wires it."""

    def __init__(self, *mapped: IdentitySpec) -> None:
        self.entra = Entra()
        directory = IdentityDirectory(DEFAULT, mapped)
        self.flow = TokenFlow(TokenCache(directory.learning(self.entra)), directory)
        self.imds = ImdsProtocol(TENANT, DEFAULT)
        self.app_service = AppServiceProtocol(IdentityHeaderSecret(SECRET), TENANT, DEFAULT)

    async def app_service_get(
        self, secret: str = SECRET, **query: str
    ) -> tuple[web.StreamResponse, dict[str, Any], dict[str, object]]:
        query = {"api-version": "2019-08-01", "resource": ARM, **query}
        request = make_mocked_request(
            "GET", "/msi/token?" + urlencode(query), headers={"X-IDENTITY-HEADER": secret}
        )
        return await self._answer(self.app_service, request)

    async def imds_get(
        self, **query: str
    ) -> tuple[web.StreamResponse, dict[str, Any], dict[str, object]]:
        query = {"api-version": "2018-02-01", "resource": ARM, **query}
        request = make_mocked_request(
            "GET", TOKEN_PATH + "?" + urlencode(query), headers={"Metadata": "true"}
        )
        return await self._answer(self.imds, request)

    async def _answer(
        self, protocol: TokenProtocol, request: web.Request
    ) -> tuple[web.StreamResponse, dict[str, Any], dict[str, object]]:
        target = request.raw_path
        answered = self.flow.answer_now(request, target)
        response, fields = answered or await self.flow.answer(protocol, request, target)
        assert isinstance(response, web.Response) and isinstance(response.body, bytes)
        return response, json.loads(response.body), fields.as_dict()


async def test_app_service_selectors_resolve_as_imds_ones() -> None:
    pod = Pod(IdentitySpec(MAPPED))
    for param in ("principal_id", "object_id"):
        response, body, fields = await pod.app_service_get(**{param: object_id(MAPPED)})
        assert response.status == 200, body
        assert body["client_id"] == MAPPED
        assert fields["api_version"] == "2019-08-01" and fields["client_id"] == MAPPED
    arm_spelling = resource_id(DEFAULT).replace("resourcegroups", "resourceGroups").upper()
    response, body, _ = await pod.app_service_get(mi_res_id=arm_spelling)
    assert response.status == 200 and body["client_id"] == DEFAULT
    _, imds_body, _ = await pod.imds_get(object_id=object_id(MAPPED))
    assert imds_body["client_id"] == MAPPED
    assert {key.client_id for key in pod.entra.calls} == {DEFAULT, MAPPED}
    assert len(pod.entra.calls) == 2, "one exchange per identity, shared by both protocols"


async def test_app_service_identity_not_found_in_its_shape_until_learned() -> None:
    pod = Pod()
    response, body, fields = await pod.app_service_get(principal_id=object_id(MAPPED))
    assert response.status == 400
    assert set(body) == {"statusCode", "message"} and body["statusCode"] == 400
    assert body["message"].startswith("Identity not found")
    assert DEFAULT in body["message"], "names the identities checked"
    assert fields["error"] == "identity_unknown"
    # A request by client id teaches the pod that identity's ids: the same target, not
    # found a moment ago, now means that identity.
    response, body, _ = await pod.app_service_get(client_id=MAPPED)
    assert response.status == 200 and body["client_id"] == MAPPED
    response, body, _ = await pod.app_service_get(principal_id=object_id(MAPPED))
    assert response.status == 200 and body["client_id"] == MAPPED
    _, imds_body, _ = await pod.imds_get(object_id=object_id(MAPPED))
    assert imds_body["access_token"] == body["access_token"], "one cache for both"


async def test_a_caller_without_the_secret_makes_no_exchange() -> None:
    pod = Pod(IdentitySpec(MAPPED))
    response, body, fields = await pod.app_service_get("wrong", object_id=object_id(MAPPED))
    assert response.status == 401 and "does not match" in body["message"]
    assert fields["error"] == "identity_header"
    assert pod.entra.calls == []


async def test_an_outage_while_resolving_is_a_retryable_5xx_in_app_services_shape() -> None:
    pod = Pod()
    pod.entra.failures[DEFAULT] = EntraUnavailable("Entra ID unreachable", retry_after=3.0)
    response, body, _ = await pod.app_service_get(object_id=object_id(DEFAULT))
    assert response.status == 503 and response.headers["Retry-After"] == "3"
    assert body == {"statusCode": 503, "message": "Entra ID unreachable"}
