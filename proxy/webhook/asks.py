"""What a pod asks this webhook for: its labels and annotations, and its namespace's label.

The names are the Workload ID webhook's (so the migration guide's annotations work as
written), plus this project's three: the namespace label that opts every pod in (the way
service meshes do it), the pod annotation that opts one pod out, and the pod annotation for
the proxy's mode. A value that cannot be read (a port that is not a number, an expiry out of
range) is the pod's mistake: `PodError`, a denial that says which annotation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy import config
from proxy.inject import additions

WI = "azure.workload.identity/"
USE_LABEL = additions.USE_LABEL
CLIENT_ID = WI + "client-id"
TENANT_ID = WI + "tenant-id"
TOKEN_EXPIRATION = WI + "service-account-token-expiration"
SKIP_CONTAINERS = WI + "skip-containers"
INJECT_PROXY = WI + "inject-proxy-sidecar"
PROXY_PORT = WI + "proxy-sidecar-port"

OURS = "imds-proxy.azure.workload.identity/"
NAMESPACE_LABEL = OURS + "inject"
"""On a namespace, `enabled`: every pod in it gets the identity and the proxy."""
NAMESPACE_ENABLED = "enabled"
OPT_OUT = OURS + "inject"
"""On a pod, `"false"`: no proxy from this webhook (the identity still, if labelled)."""
MODE = OURS + "mode"
"""On a pod: redirect (default), endpoint (no privileged init container) or both."""
DECISIONS = OURS + "decisions"
"""Written on the pod: where its identity came from and what was done, as JSON."""
POD_IDENTITY_LABEL = "aadpodidbinding"


class PodError(ValueError):
    """An annotation the pod carries cannot be used; the message names it."""


@dataclass(frozen=True)
class PodAsks:
    """What the pod itself says, before its namespace is known."""

    identity: bool
    proxy: bool
    opted_out: bool
    binding_selector: str | None

    @property
    def complete(self) -> bool:
        """True when the namespace's label could change nothing."""
        return self.opted_out or (self.identity and self.proxy)


def pod_asks(pod: Mapping[str, Any]) -> PodAsks:
    labels, annotations = _labels(pod), _annotations(pod)
    selector = labels.get(POD_IDENTITY_LABEL)
    return PodAsks(
        identity=_true(labels.get(USE_LABEL)),
        proxy=_true(annotations.get(INJECT_PROXY)),
        opted_out=str(annotations.get(OPT_OUT, "")).strip().lower() == "false",
        binding_selector=str(selector) if selector else None,
    )


def namespace_opted_in(namespace: Mapping[str, Any]) -> bool:
    return _labels(namespace).get(NAMESPACE_LABEL) == NAMESPACE_ENABLED


def proxy_port(pod: Mapping[str, Any]) -> int:
    text = _annotations(pod).get(PROXY_PORT)
    if text is None:
        return config.DEFAULT_PROXY_PORT
    try:
        port = int(str(text).strip())
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise PodError(f"{PROXY_PORT}: {text!r} is not a port number (1 to 65535)")
    return port


def mode(pod: Mapping[str, Any]) -> str:
    value = str(_annotations(pod).get(MODE, "redirect")).strip().lower()
    if value not in additions.MODES:
        raise PodError(f"{MODE}: {value!r} is not one of {', '.join(additions.MODES)}")
    return value


def token_seconds(pod: Mapping[str, Any], service_account: Mapping[str, Any]) -> int:
    """The pod's annotation, else the service account's, else 3600; as the webhook does."""
    for source, obj in (("pod", pod), ("service account", service_account)):
        text = _annotations(obj).get(TOKEN_EXPIRATION)
        if text not in (None, ""):
            low, high = additions.TOKEN_SECONDS_RANGE
            try:
                seconds = int(str(text).strip())
            except ValueError:
                seconds = 0
            if not low <= seconds <= high:
                raise PodError(
                    f"{TOKEN_EXPIRATION} on the {source}: {text!r} must be seconds "
                    f"from {low} to {high}"
                )
            return seconds
    return additions.TOKEN_SECONDS


def skip_containers(pod: Mapping[str, Any]) -> frozenset[str]:
    text = str(_annotations(pod).get(SKIP_CONTAINERS, ""))
    return frozenset(name.strip() for name in text.split(";") if name.strip())


def service_account_name(pod: Mapping[str, Any]) -> str:
    spec = pod.get("spec") or {}
    return str(spec.get("serviceAccountName") or spec.get("serviceAccount") or "default")


def annotation(obj: Mapping[str, Any], name: str) -> str | None:
    value = _annotations(obj).get(name)
    return str(value).strip() or None if value is not None else None


def _true(value: Any) -> bool:
    return str(value).strip().lower() == "true"


def _labels(obj: Mapping[str, Any]) -> dict[str, Any]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def _annotations(obj: Mapping[str, Any]) -> dict[str, Any]:
    return dict((obj.get("metadata") or {}).get("annotations") or {})
