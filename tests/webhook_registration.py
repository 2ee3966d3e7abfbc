"""deploy/webhook's MutatingWebhookConfiguration, pointed at a webhook process on loopback.

For the real-cluster tier: the API server of a single-node cluster reaches 127.0.0.1, so the
webhook runs as a process there (`imds-proxy webhook --kubeconfig ...`) and is registered
with a `url` client config and the CA of its certificate, instead of the Service. Everything
else (rules, selectors, failurePolicy, timeoutSeconds, reinvocationPolicy) is the shipped
configuration's, so the tier tests what is deployed.

The recipe for the tier (tests/cluster/ on the cluster branch):
1. Certificate: `proxy.devissuer.pki.generate_tls_files(dir)` (SAN 127.0.0.1).
2. Webhook (`tests.webhook_process.WebhookProcess` runs it): `python -m proxy webhook
   --host 127.0.0.1 --port P --metrics-port M
   --tls-cert-file dir/server.pem --tls-key-file dir/server-key.pem --kubeconfig ADMIN
   --tenant-id T --proxy-image ... --proxy-init-image ... --api-timeout 3`; wait for
   https://127.0.0.1:P/readyz (it reads /version first: native sidecar from 1.32).
3. Register: `kubectl apply` of `loopback_configuration(P, ca_pem)` (as JSON); delete it at
   the end, or every later pod creation in the cluster waits on a dead URL.
4. Pods: the guide's pod (deploy/examples/pod.yaml and its service account, annotated with
   the stand-in issuer's client id), and a plain pod in a namespace labelled
   `imds-proxy.azure.workload.identity/inject=enabled`; both come back mutated (`kubectl get
   pod -o json`: azwi-proxy-init, azwi-proxy, AZURE_* env, the decisions annotation), run,
   and the app's GET http://169.254.169.254/metadata/identity/oauth2/token gets a token.
5. Carry-over: apply the aadpodidentity.k8s.io/v1 CRDs (AzureIdentity, AzureIdentityBinding),
   an identity and a binding with selector S, a service account without client-id, a pod
   labelled aadpodidbinding=S: its AZURE_CLIENT_ID is the AzureIdentity's clientID.
6. Not twice: a pod that already has azwi-proxy (pod-mutated-native-sidecar.yaml) keeps one
   proxy and the create prints the webhook's warning; `kubectl get` shows one of each.
7. Down or slow: stop the webhook (SIGSTOP for slow, SIGTERM for down); a labelled pod's
   create fails (failurePolicy Fail) within timeoutSeconds (5 s) plus a margin; with the
   registration's failurePolicy patched to Ignore it is admitted unchanged within the same.
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import yaml

CONFIGURATION = (
    Path(__file__).resolve().parent.parent
    / "deploy"
    / "webhook"
    / "mutatingwebhookconfiguration.yaml"
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
