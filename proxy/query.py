"""What a token request asks for, whatever protocol it came in.

Both token protocols (`proxy.imds`, `proxy.appservice`) read their requests into these
values; the token flow (`proxy.tokenflow`) and the identity directory
(`proxy.identities`) work on them without knowing which protocol asked.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.tokens.model import TokenKey

_DEFAULT_SUFFIX = "/.default"


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """A token for `key`, answered as being for `resource` (as the caller spelled it)."""

    resource: str
    key: TokenKey


@dataclass(frozen=True, slots=True)
class Selector:
    """An identity named by its object id or its resource id instead of its client id."""

    kind: str
    """`object_id` or `resource_id`."""
    param: str
    """The query parameter as the caller spelled it (`msi_res_id`, `mi_res_id`...)."""
    value: str


@dataclass(frozen=True, slots=True)
class IdentityQuery:
    """A valid token request whose client id is still to be found from `selector`."""

    resource: str
    tenant_id: str
    selector: Selector

    def key_for(self, client_id: str) -> TokenKey:
        return TokenKey(self.tenant_id, client_id, scope_for(self.resource))

    def resolved(self, client_id: str) -> TokenRequest:
        return TokenRequest(self.resource, self.key_for(client_id))


def scope_for(resource: str) -> str:
    """Entra's v2 scope for an IMDS resource, as upstream forms it (trailing slash kept)."""
    return resource if resource.endswith(_DEFAULT_SUFFIX) else resource + _DEFAULT_SUFFIX
