"""Which identity a request means when it names an object id or a resource id.

Workload identity knows an identity by its client id; legacy callers also select one by
object id (`object_id`) or by Azure resource id (`msi_res_id`, `mi_res_id`, `msi-res-id`).
Both appear in the identity's own access tokens (`oid`, and `xms_mirid` for managed
identities), so every successful exchange teaches the directory its identity's ids, and a
selector nobody matches yet is resolved by one exchange per configured identity not yet
seen. `--identity` mappings cover the ids tokens do not carry. Learned ids never change
meaning (object and resource ids are immutable), so a resolved query may be remembered;
an unresolved one may match later and must not be.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

import structlog

from proxy.failures import Failure, failure_for
from proxy.identity_ids import IdentitySpec, is_object_id, is_resource_id
from proxy.jwtpayload import NotAJwt, unverified_claims
from proxy.query import IdentityQuery, Selector, TokenRequest
from proxy.tokens.cache import Exchange
from proxy.tokens.errors import EntraRejected, TokenError
from proxy.tokens.model import AccessToken, TokenKey

Fetch = Exchange
"""A token for a key from the cache (`TokenCache.get`): the same shape as an exchange."""

log = structlog.get_logger("proxy.identities")

MAX_LEARNED = 256
"""Identities learned beyond the configured ones (each needs a working federation)."""


class IdentityDirectory:
    """Object ids and resource ids of the pod's identities, by client id."""

    def __init__(self, default_client_id: str | None, specs: Iterable[IdentitySpec]) -> None:
        specs = list(specs)
        configured = [default_client_id] if default_client_id else []
        self._configured = list(dict.fromkeys(configured + [spec.client_id for spec in specs]))
        """Identities worth one exchange to learn their ids: the default, then the mapped."""
        self._seen: set[str] = set()
        self._others = 0
        """How many of `_seen` are not configured (they are bounded)."""
        self._ids: dict[tuple[str, str], str] = {}
        for spec in specs:
            for kind, value in (("object_id", spec.object_id), ("resource_id", spec.resource_id)):
                if value is not None:
                    self._ids[(kind, value.lower())] = spec.client_id

    def find(self, selector: Selector) -> str | None:
        """The client id of the identity `selector` names, if known (ids compare case-blind,
        as ARM compares resource ids)."""
        return self._ids.get((selector.kind, selector.value.lower()))

    @property
    def known(self) -> list[str]:
        """Client ids whose tokens have been seen, configured ones first."""
        return [c for c in self._configured if c in self._seen] + sorted(
            self._seen.difference(self._configured)
        )

    def unseen(self) -> list[str]:
        """Configured identities no exchange has succeeded for yet."""
        return [c for c in self._configured if c not in self._seen]

    def learn(self, client_id: str, token: AccessToken) -> None:
        """Record the ids `token` carries for `client_id` (called for every new token)."""
        if client_id in self._seen:
            return
        if client_id not in self._configured:
            if self._others >= MAX_LEARNED:
                return
            self._others += 1
        self._seen.add(client_id)
        object_id, resource_id = identity_claims(token.value)
        for kind, value in (("object_id", object_id), ("resource_id", resource_id)):
            if value is None:
                continue
            owner = self._ids.setdefault((kind, value.lower()), client_id)
            if owner != client_id:
                log.warning(
                    "identity id claimed twice",
                    kind=kind,
                    value=value,
                    client_id=client_id,
                    kept=owner,
                )
        log.info(
            "learned identity", client_id=client_id, object_id=object_id, resource_id=resource_id
        )

    def learning(self, exchange: Exchange) -> Exchange:
        """`exchange`, teaching this directory the ids of each token it returns."""

        async def exchange_and_learn(key: TokenKey) -> AccessToken:
            token = await exchange(key)
            self.learn(key.client_id, token)
            return token

        return exchange_and_learn

    async def resolve(self, query: IdentityQuery, fetch: Fetch) -> TokenRequest | Failure:
        """The request `query` means, learning configured identities first when needed.

        Or the failure: identity not found (400, final only until an identity is learned,
        so never to be remembered), or the transient failure that kept an identity from
        being checked (5xx or 429, never a 400 that callers would believe).
        """
        client_id = self.find(query.selector)
        if client_id is None:
            unseen = self.unseen()
            results = await asyncio.gather(
                *(fetch(query.key_for(c)) for c in unseen), return_exceptions=True
            )
            client_id = self.find(query.selector)
            if client_id is None:
                return self._not_found(query.selector, dict(zip(unseen, results, strict=True)))
        return query.resolved(client_id)

    def _not_found(self, selector: Selector, tried: dict[str, Any]) -> Failure:
        failures = {c: r for c, r in tried.items() if isinstance(r, BaseException)}
        for result in failures.values():
            if isinstance(result, TokenError) and not isinstance(result, EntraRejected):
                return failure_for(result)  # this identity may be the one: try again later
            if not isinstance(result, TokenError):  # a bug, not an answer
                raise result
        unchecked = "".join(
            f"; {client_id} could not be asked: {_first_line(exc)}"
            for client_id, exc in failures.items()
        )
        return identity_not_found(selector, self.known, unchecked)


def identity_not_found(selector: Selector, known: Sequence[str], unchecked: str) -> Failure:
    """No identity of the pod has the selected id; `known` are the client ids whose ids
    are known, `unchecked` says which could not be asked (empty when none)."""
    checked = ", ".join(known) if known else "none"
    return Failure(
        400,
        "invalid_request",
        f"Identity not found: no identity of this pod has {selector.param} "
        f"'{_clip(selector.value)}' (identities checked: {checked}{unchecked}); an id "
        "its tokens do not carry can be mapped with --identity or IMDS_PROXY_IDENTITIES",
        "identity_unknown",
    )


def _clip(value: str, limit: int = 300) -> str:
    return value if len(value) <= limit else value[:limit] + "..."


def identity_claims(token: str) -> tuple[str | None, str | None]:
    """The `oid` and `xms_mirid` claims of an access token, and nothing else of it.

    The token is read, never verified (it came from Entra over TLS) and never logged; a
    token that is not a JWT, or lacks the claims, yields None for them.
    """
    try:
        claims = unverified_claims(token)
    except NotAJwt:
        return None, None
    oid, mirid = claims.get("oid"), claims.get("xms_mirid")
    object_id = oid if isinstance(oid, str) and is_object_id(oid) else None
    resource_id = mirid if isinstance(mirid, str) and is_resource_id(mirid) else None
    return object_id, resource_id


def _first_line(exc: BaseException) -> str:
    description = getattr(exc, "description", str(exc))
    return str(description).split("\n", 1)[0][:200]
