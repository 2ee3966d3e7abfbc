"""Entra's ids as the proxy accepts them, and `IdentitySpec`: one identity named by them.

Beside `proxy.identities`, not in it: that module needs the token layer, and the settings,
the webhook and `imds-proxy inject` check ids and specs without loading any of it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_GUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_TENANT = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_RESOURCE_ID_PREFIX = "/subscriptions/"
_SPEC_FORM = "CLIENT_ID,object_id=OID,resource_id=RID"


def is_client_id(value: str) -> bool:
    """Entra application (client) ids are GUIDs."""
    return bool(_GUID.match(value))


def is_tenant_id(value: str) -> bool:
    """A tenant GUID or domain name, as the proxy accepts in AZURE_TENANT_ID."""
    return bool(_TENANT.match(value))


is_object_id = is_client_id
"""Object ids are GUIDs too."""


def is_resource_id(value: str) -> bool:
    """The shape of an Azure resource id, as far as an identity selector needs it."""
    return value[: len(_RESOURCE_ID_PREFIX)].lower() == _RESOURCE_ID_PREFIX and value.isprintable()


class IdentitySpecError(ValueError):
    """A spec is malformed or clashes with another; the message starts with its source."""


@dataclass(frozen=True, slots=True)
class IdentitySpec:
    """An identity of the pod by client id, with the ids its tokens may not reveal."""

    client_id: str
    object_id: str | None = None
    resource_id: str | None = None

    def __str__(self) -> str:
        """The spec as `parse` reads it back (what the webhook writes for the proxy)."""
        pairs = (("object_id", self.object_id), ("resource_id", self.resource_id))
        return ",".join([self.client_id, *(f"{k}={v}" for k, v in pairs if v is not None)])

    @classmethod
    def parse(cls, source: str, text: str) -> IdentitySpec:
        """`CLIENT_ID[,object_id=OID][,resource_id=RID]`; errors name `source`."""
        client_id, *pairs = [part.strip() for part in text.strip().split(",")]
        if not is_client_id(client_id):
            raise IdentitySpecError(
                f"{source}: {client_id!r} must start with a client id (a GUID), as in {_SPEC_FORM}"
            )
        found: dict[str, str] = {}
        for pair in pairs:
            name, _, value = pair.partition("=")
            name, value = name.strip(), value.strip()
            if name not in ("object_id", "resource_id") or not value or name in found:
                raise IdentitySpecError(
                    f"{source}: {pair!r} is not object_id=GUID or resource_id=/subscriptions/... "
                    "(each at most once)"
                )
            if name == "object_id" and not is_object_id(value):
                raise IdentitySpecError(f"{source}: object_id {value!r} must be a GUID")
            if name == "resource_id" and not is_resource_id(value):
                raise IdentitySpecError(
                    f"{source}: resource_id {value!r} must start with /subscriptions/"
                )
            found[name] = value
        return cls(client_id, found.get("object_id"), found.get("resource_id"))


def parse_specs(given: Iterable[tuple[str, str]]) -> tuple[IdentitySpec, ...]:
    """Specs from `(source, text)` pairs, in order; no id may name two identities, because
    a selector must mean one identity whichever spec came first."""
    specs: list[IdentitySpec] = []
    owners: dict[str, str] = {}
    for source, text in given:
        spec = IdentitySpec.parse(source, text)
        if any(s.client_id.lower() == spec.client_id.lower() for s in specs):
            raise IdentitySpecError(f"{source}: {spec.client_id} is given twice; give it once")
        for value in (spec.object_id, spec.resource_id):
            if value is not None and owners.setdefault(value.lower(), spec.client_id) != (
                spec.client_id
            ):
                raise IdentitySpecError(f"{source}: {value} is given for more than one identity")
        specs.append(spec)
    return tuple(specs)
