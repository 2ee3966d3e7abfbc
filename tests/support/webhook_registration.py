"""deploy/webhook's MutatingWebhookConfiguration, pointed at a webhook process on loopback.

For the real-cluster tier: the API server of a single-node cluster reaches 127.0.0.1, so the
webhook runs as a process there (`imds-proxy webhook --kubeconfig ...`) and is registered
with a `url` client config and the CA of its certificate, instead of the Service. Everything
else (rules, selectors, failurePolicy, timeoutSeconds, reinvocationPolicy) is the shipped
configuration's, so the tier tests what is deployed.

tests/cluster/test_webhook_on_cluster.py runs it so.
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import yaml

CONFIGURATION = (
    Path(__file__).resolve().parents[2] / "deploy" / "webhook" / "mutatingwebhookconfiguration.yaml"
)


def loopback_configuration(
    port: int, ca_pem: bytes, name: str = "imds-proxy-webhook-test", host: str = "127.0.0.1"
) -> dict[str, Any]:
    shipped = yaml.safe_load(CONFIGURATION.read_text())
    config = copy.deepcopy(shipped)
    config["metadata"] = {"name": name}  # no cert-manager annotation: the CA is given here
    for hook in config["webhooks"]:
        hook["clientConfig"] = {
            "url": f"https://{host}:{port}/mutate-v1-pod",
            "caBundle": base64.b64encode(ca_pem).decode(),
        }
    return config  # type: ignore[no-any-return]
