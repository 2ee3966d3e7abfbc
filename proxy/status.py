"""`GET /status` and `GET /report`: readiness, the last failure and the migration report.

They name the tenant, the client id, the cluster's issuer and the SDKs in use, so they are
served on the pod-local token port (read with `kubectl exec ... -- /proxy doctor` or
`/proxy report`, or through `kubectl port-forward`), and on the metrics listener, which the
whole cluster network reaches, only with `--expose-status`. Descriptions are the ones
callers already get: no token, no assertion.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from proxy import __version__

if TYPE_CHECKING:
    from proxy.app import Proxy

Page = Callable[["Proxy"], dict[str, Any]]


def status_page(proxy: Proxy) -> dict[str, Any]:
    reasons = proxy.not_ready_reasons()
    failure = proxy.cache.last_failure
    return {
        "version": __version__,
        "ready": not reasons,
        "reasons": reasons,
        "tenant_id": proxy.identity.tenant_id,
        "client_id": proxy.identity.client_id,
        "last_failure": None if failure is None else dataclasses.asdict(failure),
        "federation_failures": [
            {"cause": cause, "phase": phase, "count": count}
            for (cause, phase), count in sorted(proxy.cache.stats.federation_failures.items())
        ],
    }


def report_page(proxy: Proxy) -> dict[str, Any]:
    report = proxy.callers.report()
    report["identity_source"] = proxy.identity.source  # where the webhook found it
    return report


def inspection_pages() -> dict[str, Page]:
    """The pages by route name (`proxy.paths.EXACT_ROUTES`)."""
    return {"status": status_page, "report": report_page}
