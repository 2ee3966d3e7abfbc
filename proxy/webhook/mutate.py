"""One AdmissionReview, start to finish: what the pod asks, what is read, what it gets.

The pod is mutated by the same code as `imds-proxy inject` (`proxy.inject.additions`) on a
copy, and the answer is the JSONPatch from the pod as sent to that copy, so the patch can
only say what the mutation did. Every decision (why the pod was mutated, where its client
id came from, what happened to a proxy it already had) goes into the pod's
`imds-proxy.azure.workload.identity/decisions` annotation and the review's log line.

Failures are answers: the pod's own mistakes (a bad annotation, hostNetwork with a proxy)
are denials naming the annotation; an API server that cannot be read is a denial or an
allowed-unchanged pod with a warning, as `--on-error` says.
"""

from __future__ import annotations

import asyncio
import copy
import json
from dataclasses import dataclass, field
from typing import Any

import jsonpatch

from proxy import config
from proxy.identity_ids import IdentitySpec, is_client_id, is_tenant_id
from proxy.inject import additions, ledger
from proxy.webhook import asks, podidentity, review
from proxy.webhook.kube import Api, ApiError
from proxy.webhook.metrics import WebhookMetrics
from proxy.webhook.settings import Settings

WHO = "imds-proxy webhook"


class Unreadable(Exception):
    """An object the decision needs could not be read; `what` is its kind."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(reason)
        self.what = what


@dataclass
class Outcome:
    """The AdmissionReview to send, and what to log about it."""

    answer: dict[str, Any]
    result: str
    fields: dict[str, Any] = field(default_factory=dict)


class Mutator:
    def __init__(self, settings: Settings, api: Api, metrics: WebhookMetrics) -> None:
        self.settings = settings
        self.api = api
        self.metrics = metrics
        self.classic: bool | None = {"native": False, "classic": True}.get(settings.sidecar)
        """None until the API server's version is known (`--sidecar auto`)."""

    async def review(self, request: review.Request) -> Outcome:
        if not request.is_pod_creation:
            return Outcome(review.allowed(request.uid), "ignored")
        pod = request.object
        if not isinstance(pod, dict) or not isinstance(pod.get("spec"), dict):
            message = f"{WHO}: the request's object is not a pod (no spec)"
            return Outcome(review.denied(request.uid, 400, message), "denied")
        meta = pod.get("metadata") or {}
        namespace = request.namespace or str(meta.get("namespace") or "default")
        name = meta.get("name") or f"{meta.get('generateName', '')}*"
        case = _Case(request.uid, namespace, pod)
        case.fields.update(namespace=namespace, pod=name, dry_run=request.dry_run)
        try:
            async with asyncio.timeout(self.settings.api_timeout):
                return await self._decide(case)
        except (asks.PodError, additions.InjectError, ledger.LedgerError) as exc:
            return case.outcome(review.denied(case.uid, 400, f"{WHO}: {exc}"), "denied", str(exc))
        except TimeoutError:
            return self._unreadable(case, Unreadable("api", _late(self.settings.api_timeout)))
        except Unreadable as exc:
            return self._unreadable(case, exc)

    def _unreadable(self, case: _Case, exc: Unreadable) -> Outcome:
        self.metrics.api_errors.labels(exc.what).inc()
        reason = f"cannot read {exc}"
        if self.settings.on_error == "allow":
            warning = f"{WHO}: {reason}; admitted without the identity or proxy (--on-error allow)"
            return case.outcome(
                review.allowed(case.uid, warnings=[warning]), "allowed_on_error", reason
            )
        message = (
            f"{WHO}: {reason}; denied so that the pod does not start without its identity "
            "(--on-error deny); a ReplicaSet or Job tries again by itself"
        )
        return case.outcome(review.denied(case.uid, 503, message), "denied", reason)

    async def _decide(self, case: _Case) -> Outcome:
        pod, decisions = case.pod, case.decisions
        asked = asks.pod_asks(pod)
        from_namespace = False
        if not asked.complete:
            ns = await self._read(f"/api/v1/namespaces/{case.namespace}", "namespace")
            from_namespace = asks.namespace_opted_in(ns) and not asked.opted_out
        own_proxy = asked.proxy and not asked.opted_out
        if from_namespace and not own_proxy and pod["spec"].get("hostNetwork") is True:
            # A DaemonSet's node agent in an opted-in namespace: refusing it would stop the
            # DaemonSet; the namespace's default just does not apply to it.
            from_namespace = False
            case.warnings.append(
                f"{WHO}: hostNetwork pod: no proxy from the namespace label "
                "(the redirect would capture the node's IMDS traffic)"
            )
        want_proxy = own_proxy or from_namespace
        if not (asked.identity or want_proxy):
            why = "opted out" if asked.opted_out else "not asked"
            answer = review.allowed(case.uid, warnings=case.warnings)
            return case.outcome(answer, "unchanged", why)
        decisions["asked"] = _why(asked, from_namespace)
        add, replace = self._proxy_plan(case, want_proxy, asked.opted_out)
        identity = await self._identity(case, asked, adding_proxy=add)
        sidecar = self._sidecar(pod, identity, case) if add else None
        return self._answer(case, identity, sidecar, replace)

    def _proxy_plan(self, case: _Case, want: bool, opted_out: bool) -> tuple[bool, bool]:
        """Whether to add the sidecar, and whether another webhook's goes first."""
        present = additions.proxy_containers(case.pod)
        if not want:
            case.decisions["proxy"] = "opted out" if opted_out else "not asked"
            return False, False
        previous = ledger.recorded(case.pod)
        ours = previous is not None and any(
            additions.PROXY in names for names in previous.added.values()
        )
        if present and ours:
            case.decisions["proxy"] = "already added (reinvocation)"
            return False, False
        if present and self.settings.other_proxy == "keep":
            case.decisions["proxy"] = "kept another webhook's"
            case.warnings.append(
                f"{WHO}: the pod already has {'/'.join(present)} from another webhook; "
                "left as it is (--other-proxy keep)"
            )
            return False, False
        case.decisions["proxy"] = "replaced another webhook's" if present else "added"
        return True, bool(present)

    async def _identity(
        self, case: _Case, asked: asks.PodAsks, adding_proxy: bool
    ) -> additions.Identity:
        sa_name = asks.service_account_name(case.pod)
        sa_ref = f"{case.namespace}/{sa_name}"
        sa = await self._read(
            f"/api/v1/namespaces/{case.namespace}/serviceaccounts/{sa_name}",
            "serviceaccount",
            f"service account {sa_ref}",
        )
        decisions = case.decisions
        client_id = asks.annotation(sa, asks.CLIENT_ID)
        resource_id: str | None = None
        source = "service_account"
        decisions["clientId"] = {"from": f"service account {sa_ref}", "value": client_id}
        selector = asked.binding_selector
        if client_id is None and selector and self.settings.pod_identity != "off":
            try:
                found = await podidentity.find(
                    self.api, case.namespace, selector, self.settings.pod_identity
                )
            except ApiError as exc:
                raise Unreadable("aadpodidentity", f"aad-pod-identity objects: {exc}") from exc
            client_id, resource_id = found.client_id, found.resource_id
            decisions["clientId"] = {
                "from": f"aadpodidbinding {selector}: {found.reason}",
                "value": client_id,
            }
            source = "aad_pod_identity" if client_id else "none"
        elif selector and client_id is not None:
            decisions["aadpodidbinding"] = "ignored: the service account names the client id"
        if client_id is None:
            source = "none"
            decisions["clientId"]["value"] = None
            case.warnings.append(
                f"{WHO}: no client id for {sa_ref} (annotation {asks.CLIENT_ID}); "
                "apps must name their identity"
            )
        self.metrics.client_ids.labels(source).inc()
        tenant = asks.annotation(sa, asks.TENANT_ID)
        decisions["tenantId"] = "service account" if tenant else "webhook setting"
        tenant = tenant or self.settings.tenant_id
        if adding_proxy:
            if not tenant:
                raise asks.PodError(
                    f"no tenant id for the proxy: annotate {sa_ref} with {asks.TENANT_ID} "
                    "or start the webhook with --tenant-id"
                )
            if not is_tenant_id(tenant):
                raise asks.PodError(f"tenant id {tenant!r} is not a tenant GUID or domain name")
            if client_id is not None and not is_client_id(client_id):
                raise asks.PodError(f"client id {client_id!r} of {sa_ref} is not a GUID")
        case.resource_id = resource_id
        return additions.Identity(
            client_id=client_id,
            tenant_id=tenant,
            authority_host=self.settings.authority_host,
            token_seconds=asks.token_seconds(case.pod, sa),
            skip_containers=asks.skip_containers(case.pod),
        )

    def _sidecar(
        self, pod: dict[str, Any], identity: additions.Identity, case: _Case
    ) -> additions.Sidecar:
        if self.classic is None:
            raise Unreadable("version", "the API server's version (not known yet)")
        source = case.decisions["clientId"]
        described = f"client id {source['value'] or '(none)'} from {source['from']}"
        extra: tuple[tuple[str, str], ...] = ((config.IDENTITY_SOURCE_ENV, described),)
        if case.resource_id and identity.client_id:
            # Callers that select the identity by mi_res_id, as they did under pod identity.
            spec = IdentitySpec(identity.client_id, resource_id=case.resource_id)
            extra += ((config.IDENTITIES_ENV, str(spec)),)
        s = self.settings
        sidecar = additions.Sidecar(
            mode=asks.mode(pod),
            classic=self.classic,
            image=s.proxy_image,
            init_image=s.proxy_init_image,
            proxy_port=asks.proxy_port(pod),
            metrics_port=s.proxy_metrics_port,
            log_level=s.proxy_log_level,
            proxy_env=extra,
        )
        owners = (pod.get("metadata") or {}).get("ownerReferences") or []
        if sidecar.classic and any(o.get("kind") == "Job" for o in owners):
            case.warnings.append(
                f"{WHO}: a classic sidecar keeps a Job's pod running after the app exits "
                "(native sidecars need Kubernetes 1.29+: --sidecar native)"
            )
        form = "classic" if sidecar.classic else "native"
        case.decisions["proxy"] += f" ({form} sidecar, {sidecar.mode}, port {sidecar.proxy_port})"
        return sidecar

    def _answer(
        self,
        case: _Case,
        identity: additions.Identity,
        sidecar: additions.Sidecar | None,
        replace: bool,
    ) -> Outcome:
        pod = case.pod
        mutated = copy.deepcopy(pod)
        if replace:
            _remove_proxy(mutated)
        previous = ledger.recorded(mutated)
        added = additions.inject(mutated, identity, sidecar, previous)
        if added.added:
            ledger.record(mutated, added)
        annotations = mutated.setdefault("metadata", {}).setdefault("annotations", {})
        # The first review's decisions stand; a reinvocation's are in its log line.
        annotations.setdefault(
            asks.DECISIONS, json.dumps(case.decisions, sort_keys=True, separators=(",", ":"))
        )
        patch = jsonpatch.make_patch(pod, mutated).patch
        # Only the decisions annotation rewritten to the same text is no change at all.
        result = "mutated" if patch else "unchanged"
        case.fields["patch_ops"] = len(patch)
        return case.outcome(
            review.allowed(case.uid, patch, case.warnings), result, case.decisions.get("asked")
        )

    async def _read(self, path: str, what: str, name: str | None = None) -> dict[str, Any]:
        try:
            return await self.api.get(path)
        except ApiError as exc:
            raise Unreadable(what, f"{name or what}: {exc}") from exc


@dataclass
class _Case:
    """One review's working state: the pod, and what has been decided and warned."""

    uid: str
    namespace: str
    pod: dict[str, Any]
    decisions: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)
    resource_id: str | None = None

    def outcome(self, answer: dict[str, Any], result: str, why: str | None) -> Outcome:
        fields = {**self.fields, "why": why}
        if self.decisions:
            fields["decisions"] = self.decisions
        if self.warnings:
            fields["warnings"] = self.warnings
        return Outcome(answer, result, fields)


def _why(asked: asks.PodAsks, from_namespace: bool) -> str:
    reasons = []
    if asked.identity:
        reasons.append(f"pod label {asks.USE_LABEL}")
    if asked.proxy and not asked.opted_out:
        reasons.append(f"pod annotation {asks.INJECT_PROXY}")
    if from_namespace:
        reasons.append(f"namespace label {asks.NAMESPACE_LABEL}")
    return ", ".join(reasons)


def _remove_proxy(pod: dict[str, Any]) -> None:
    spec = pod["spec"]
    for key in ("initContainers", "containers"):
        if key in spec:
            spec[key] = [c for c in spec[key] if c.get("name") not in additions.PROXY_NAMES]


def _late(seconds: float) -> str:
    return f"the API server: no answer within {seconds:g} s (--api-timeout)"
