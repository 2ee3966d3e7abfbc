"""A loopback stand-in for Azure Resource Manager, over real TLS, for the Azure CLI.

`az cloud register` reads a cloud's endpoints from its ARM, and `az login --identity`
fetches a token and then lists the identity's subscriptions from ARM; this answers both: the
listing with one subscription in the token's tenant and records each
request's bearer token, so a test can check that the token az sent is the one the proxy
handed out. Its certificate comes from the same throwaway PKI as the fake Entra ID
(proxy/devissuer/pki.py), trusted by the client through REQUESTS_CA_BUNDLE.

``python -m tests.support.arm_stand_in WORKDIR TENANT PORT`` runs it as its own process (in a
network namespace, say), prints ``ready`` once it listens, and serves until terminated.
"""

from __future__ import annotations

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from harness.background_server import BackgroundServer
from proxy.devissuer.pki import generate_tls_files

SUBSCRIPTION_ID = "7c3e5f90-1d2b-4a6c-8e0f-2b4d6a8c0e1f"


class ArmStandIn(BackgroundServer):
    """``with ArmStandIn(workdir, tenant_id) as arm:`` serves ``arm.url``; ``arm.ca_bundle``."""

    def __init__(self, workdir: Path, tenant_id: str, port: int = 0) -> None:
        tls = generate_tls_files(workdir / "arm-pki")
        self.ca_bundle = tls.ca_bundle
        self.seen: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.seen.append(
                    {"path": self.path, "authorization": self.headers.get("Authorization", "")}
                )
                path = "/" + self.path.split("?")[0].strip("/")
                if path == "/subscriptions":
                    self._json(200, {"value": [outer.subscription(tenant_id)]})
                elif path == "/metadata/endpoints":  # what `az cloud register` reads
                    self._json(200, outer.cloud_metadata())
                else:
                    self._json(404, {"error": {"code": "NotFound", "message": self.path}})

            def _json(self, status: int, body: dict[str, Any]) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.socket = tls.server_context().wrap_socket(
            self._server.socket, server_side=True
        )
        self.url = f"https://127.0.0.1:{self._server.server_address[1]}"
        self.serve_in_background(self._server)

    @staticmethod
    def subscription(tenant_id: str) -> dict[str, Any]:
        return {
            "id": f"/subscriptions/{SUBSCRIPTION_ID}",
            "subscriptionId": SUBSCRIPTION_ID,
            "tenantId": tenant_id,
            "displayName": "imds-proxy test subscription",
            "state": "Enabled",
            "subscriptionPolicies": {
                "locationPlacementId": "Public_2014-09-01",
                "quotaId": "PayAsYouGo_2014-09-01",
                "spendingLimit": "Off",
            },
            "authorizationSource": "RoleBased",
        }

    def cloud_metadata(self) -> dict[str, Any]:
        """The endpoints document of a cloud whose Resource Manager is this stand-in."""
        return {
            "name": "ImdsProxyTest",
            "resourceManager": self.url + "/",
            "authentication": {
                "loginEndpoint": "https://login.microsoftonline.com",
                "audiences": [
                    "https://management.core.windows.net/",
                    "https://management.azure.com/",
                ],
                "tenant": "common",
                "identityProvider": "AAD",
            },
            "suffixes": {},
        }

    def bearer_tokens(self, path: str) -> list[str]:
        """The tokens sent with each request whose path starts with ``path``."""
        return [
            s["authorization"].removeprefix("Bearer ")
            for s in self.seen
            if s["path"].startswith(path)
        ]


def main(argv: list[str]) -> None:
    workdir, tenant_id, port = Path(argv[0]), argv[1], int(argv[2])
    with ArmStandIn(workdir, tenant_id, port):
        print("ready", flush=True)
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main(sys.argv[1:])
