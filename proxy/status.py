"""`GET /status` on the metrics listener: readiness and the last failure, as JSON.

Read by `imds-proxy doctor` from inside the pod, so an operator sees what the running
process last saw. Descriptions are the ones callers already get: no token, no assertion.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from proxy import __version__
from proxy.app import Proxy


async def status_page(proxy: Proxy) -> dict[str, Any]:
    reasons = await proxy.not_ready_reasons()
    failure = proxy.cache.last_failure
    return {
        "version": __version__,
        "ready": not reasons,
        "reasons": reasons,
        "tenant_id": proxy.settings.tenant_id,
        "client_id": proxy.settings.client_id,
        "last_failure": None if failure is None else dataclasses.asdict(failure),
        "federation_failures": [
            {"cause": cause, "phase": phase, "count": count}
            for (cause, phase), count in sorted(proxy.cache.stats.federation_failures.items())
        ],
    }
