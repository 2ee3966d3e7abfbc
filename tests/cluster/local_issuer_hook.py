"""A test-only mutating webhook that does to webhook-injected pods what `after_inject` does
to `imds-proxy inject`'s output: the proxy trusts the in-pod fake Entra ID's CA, and the
fake Entra ID starts first.

It stands for what a user of a local issuer would add by hand, and is registered after the
project's webhook (configurations are called in the order of their names: `zz-...`) for
pods labelled `imds-proxy-test/local-issuer=true` only. It answers over TLS on loopback, as
the project's webhook does in the cluster tier.
"""

from __future__ import annotations

import base64
import copy
import http.server
import json
import ssl
from typing import Any

from harness.background_server import BackgroundServer
from tests.cluster.workload import localize

NAME = "zz-imds-proxy-test-local-issuer"
LABEL = "imds-proxy-test/local-issuer"


class LocalIssuerHook(BackgroundServer):
    """Serves the patch at https://127.0.0.1:<port>/ from a daemon thread."""

    def __init__(self, context: ssl.SSLContext) -> None:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self.serve_in_background(server)

    def configuration(self, ca_pem: bytes) -> dict[str, Any]:
        return {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": NAME},
            "webhooks": [
                {
                    "name": "local-issuer.imds-proxy-test.example",
                    "admissionReviewVersions": ["v1"],
                    "clientConfig": {
                        "url": f"https://127.0.0.1:{self.port}/",
                        "caBundle": base64.b64encode(ca_pem).decode(),
                    },
                    "rules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["pods"],
                            "scope": "Namespaced",
                        }
                    ],
                    "objectSelector": {"matchLabels": {LABEL: "true"}},
                    "failurePolicy": "Fail",
                    "sideEffects": "None",
                    "timeoutSeconds": 5,
                    "reinvocationPolicy": "Never",
                }
            ],
        }


def review_answer(review: dict[str, Any]) -> dict[str, Any]:
    """The AdmissionReview answer: replace the containers with their localized form."""
    request = review["request"]
    spec = request["object"]["spec"]
    localized = localize(copy.deepcopy(spec))
    patch = [
        {"op": "add", "path": "/spec/initContainers", "value": localized["initContainers"]},
        {"op": "replace", "path": "/spec/containers", "value": localized["containers"]},
    ]
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {
            "uid": request["uid"],
            "allowed": True,
            "patchType": "JSONPatch",
            "patch": base64.b64encode(json.dumps(patch).encode()).decode(),
        },
    }


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.dumps(review_answer(json.loads(self.rfile.read(length)))).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the API server's calls are not the test's output."""
