"""Carry-over from pod-managed identity: `aadpodidbinding: <selector>` to a client id.

aad-pod-identity bound a pod to an identity through two objects: an `AzureIdentityBinding`
whose `selector` equals the pod's `aadpodidbinding` label names an `AzureIdentity` (same
namespace) whose `clientID` is the identity. Pods being migrated still carry the label, so
the identity can be found without anyone writing it down again. The client id only says
which identity to ask for: Entra ID still issues tokens only if that identity trusts the
pod's service account (a federated credential), so the carry-over grants nothing by itself.

aad-pod-identity's Go types matched JSON keys without regard to case, and manifests in the
wild say `ClientID`, `clientID` and `clientId`: keys are read the same way here. Where the
lookup goes is a setting: the pod's own namespace (default), or every namespace as
aad-pod-identity itself did unless told otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.webhook.kube import Api, ApiError

GROUP_VERSION = "/apis/aadpodidentity.k8s.io/v1"
SCOPES = ("namespace", "cluster", "off")


@dataclass(frozen=True)
class Found:
    """The outcome, with the reason in words for the pod's annotation and the log."""

    client_id: str | None
    resource_id: str | None
    reason: str


async def find(api: Api, namespace: str, selector: str, scope: str) -> Found:
    """The client id the pod's binding leads to; `ApiError` if the objects cannot be read."""
    where = f"/namespaces/{namespace}" if scope == "namespace" else ""
    try:
        bindings = await api.get(f"{GROUP_VERSION}{where}/azureidentitybindings")
    except ApiError as exc:
        if exc.status == 404:  # the CRDs are not installed
            return Found(None, None, "aad-pod-identity is not installed (no AzureIdentityBinding)")
        raise
    matching = [
        b for b in bindings.get("items") or [] if str(_spec(b, "selector") or "") == selector
    ]
    if not matching:
        return Found(None, None, f"no AzureIdentityBinding has selector {selector!r}")
    found: dict[str, tuple[str | None, str]] = {}
    for binding in matching:
        ns = (binding.get("metadata") or {}).get("namespace") or namespace
        bname = (binding.get("metadata") or {}).get("name")
        name = _spec(binding, "azureIdentity")
        if not name:
            continue
        try:
            identity = await api.get(f"{GROUP_VERSION}/namespaces/{ns}/azureidentities/{name}")
        except ApiError as exc:
            if exc.status == 404:
                continue  # a binding to an identity that is gone binds nothing
            raise
        client_id = _spec(identity, "clientID")
        if client_id:
            path = f"AzureIdentityBinding {ns}/{bname} -> AzureIdentity {ns}/{name}"
            found.setdefault(str(client_id), (_spec(identity, "resourceID"), path))
    if not found:
        return Found(
            None,
            None,
            f"the bindings with selector {selector!r} name no AzureIdentity with a clientID",
        )
    if len(found) > 1:
        return Found(
            None,
            None,
            f"selector {selector!r} binds {len(found)} identities ({', '.join(sorted(found))}); "
            "name one with the service account's client-id annotation",
        )
    ((client_id, (resource_id, path)),) = found.items()
    return Found(client_id, resource_id, path)


def _spec(obj: Mapping[str, Any], key: str) -> Any:
    spec = obj.get("spec") or {}
    wanted = key.lower()
    return next((v for k, v in spec.items() if str(k).lower() == wanted), None)
