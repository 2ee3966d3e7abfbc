"""AdmissionReview `admission.k8s.io/v1`: the request read strictly, the response written.

A body that is not an AdmissionReview v1 carrying a request with a uid cannot be answered
in kind (the answer must echo the uid), so it is refused with HTTP 400 and the reason
(`MalformedReview`). Everything else gets an AdmissionReview back.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"


class MalformedReview(ValueError):
    """The body is not an AdmissionReview v1 request; the message says what is wrong."""


@dataclass(frozen=True)
class Request:
    uid: str
    group: str
    version: str
    kind: str
    resource: str
    sub_resource: str
    operation: str
    namespace: str
    object: Any
    dry_run: bool

    @property
    def is_pod_creation(self) -> bool:
        return (
            (self.group, self.version, self.kind) == ("", "v1", "Pod")
            and self.resource == "pods"
            and not self.sub_resource
            and self.operation == "CREATE"
        )


def parse(body: bytes) -> Request:
    try:
        review = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedReview(f"the body is not JSON ({exc})") from exc
    if not isinstance(review, dict):
        raise MalformedReview("the body is not a JSON object")
    if review.get("apiVersion") != API_VERSION or review.get("kind") != KIND:
        raise MalformedReview(
            f"expected apiVersion {API_VERSION} and kind {KIND}, got "
            f"{review.get('apiVersion')!r} and {review.get('kind')!r} "
            "(admissionReviewVersions must be [v1])"
        )
    request = review.get("request")
    if not isinstance(request, dict):
        raise MalformedReview("the AdmissionReview has no request")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise MalformedReview("the request has no uid")
    kind = _mapping(request, "kind")
    resource = _mapping(request, "resource")
    return Request(
        uid=uid,
        group=str(kind.get("group", "")),
        version=str(kind.get("version", "")),
        kind=str(kind.get("kind", "")),
        resource=str(resource.get("resource", "")),
        sub_resource=str(request.get("subResource") or ""),
        operation=str(request.get("operation", "")),
        namespace=str(request.get("namespace") or ""),
        object=request.get("object"),
        dry_run=bool(request.get("dryRun")),
    )


def _mapping(request: dict[str, Any], key: str) -> dict[str, Any]:
    value = request.get(key)
    if not isinstance(value, dict):
        raise MalformedReview(f"the request has no {key}")
    return value


def allowed(
    uid: str, patch: list[dict[str, Any]] | None = None, warnings: list[str] | None = None
) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    return _review(response, warnings)


def denied(uid: str, code: int, message: str, warnings: list[str] | None = None) -> dict[str, Any]:
    status = {"code": code, "message": message, "reason": _REASONS.get(code, "Forbidden")}
    return _review({"uid": uid, "allowed": False, "status": status}, warnings)


_REASONS = {400: "BadRequest", 403: "Forbidden", 503: "ServiceUnavailable"}


def _review(response: dict[str, Any], warnings: list[str] | None) -> dict[str, Any]:
    if warnings:
        response["warnings"] = list(warnings)  # kept short: the API server may cut past 120
    return {"apiVersion": API_VERSION, "kind": KIND, "response": response}
