"""A Kubernetes API server stand-in on loopback: the few reads the webhook makes.

Serves /version, namespaces, service accounts and the two aad-pod-identity kinds from a
dictionary the test fills, from its own thread and event loop (so a test on any loop, or a
process, can call it). `fail` makes a path prefix answer a status, `delay` makes every
answer late; `seen` records each request's path and Authorization header.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from pathlib import Path
from typing import Any, Self

from aiohttp import web

from harness.proxy_process import free_port
from proxy.devissuer.pki import TlsFiles

PODID = "/apis/aadpodidentity.k8s.io/v1"


class KubeStandIn:
    def __init__(self, version: str = "v1.33.1", tls: TlsFiles | None = None) -> None:
        self.version = version
        self.tls = tls
        self.objects: dict[str, dict[str, Any]] = {}
        self.crds = True
        self.fail: dict[str, int] = {}
        self.delay = 0.0
        self.seen: list[tuple[str, str | None]] = []
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def kubeconfig(self, directory: Path, token: str = "stand-in-token") -> Path:
        """A kubeconfig for it: the token, and over TLS the CA as certificate-authority-data."""
        path = directory / "kubeconfig"
        ca = ""
        if self.tls:
            data = base64.b64encode(self.tls.ca_bundle.read_bytes()).decode()
            ca = f"    certificate-authority-data: {data}\n"
        path.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\n"
            f"clusters:\n- name: test\n  cluster:\n    server: {self.url}\n{ca}"
            f"users:\n- name: test\n  user:\n    token: {token}\n"
            "contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n"
        )
        return path

    # -- what the test puts in ---------------------------------------------------------

    def namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        self.objects[f"/api/v1/namespaces/{name}"] = _obj("Namespace", name, None, labels)

    def service_account(
        self, namespace: str, name: str, annotations: dict[str, str] | None = None
    ) -> None:
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}"
        self.objects[path] = _obj("ServiceAccount", name, namespace, None, annotations)

    def azure_identity(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        path = f"{PODID}/namespaces/{namespace}/azureidentities/{name}"
        self.objects[path] = {**_obj("AzureIdentity", name, namespace), "spec": spec}

    def binding(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        path = f"{PODID}/namespaces/{namespace}/azureidentitybindings/{name}"
        self.objects[path] = {**_obj("AzureIdentityBinding", name, namespace), "spec": spec}

    # -- serving -----------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.seen.append((path, request.headers.get("Authorization")))
        if self.delay:
            await asyncio.sleep(self.delay)
        for prefix, status in self.fail.items():
            if path.startswith(prefix):
                return _status(status, f"stand-in told to answer {status}")
        if path == "/version":
            return web.json_response({"major": "1", "gitVersion": self.version})
        if path.startswith(PODID) and not self.crds:
            return _status(404, "the server could not find the requested resource")
        if path.endswith("/azureidentitybindings"):
            prefix = path[: -len("azureidentitybindings")]
            if prefix == f"{PODID}/":
                prefix = PODID  # every namespace
            items = [
                obj
                for key, obj in self.objects.items()
                if key.startswith(prefix) and "/azureidentitybindings/" in key
            ]
            return web.json_response({"kind": "AzureIdentityBindingList", "items": items})
        if path in self.objects:
            return web.json_response(self.objects[path])
        return _status(404, f"{path.rsplit('/', 1)[-1]!r} not found")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        ssl_context = self.tls.server_context() if self.tls else None
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=ssl_context)
        self._loop.run_until_complete(site.start())
        self._started.set()
        self._loop.run_forever()

    def __enter__(self) -> Self:
        self._thread.start()
        self._started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def _obj(
    kind: str,
    name: str,
    namespace: str | None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = labels
    if annotations:
        meta["annotations"] = annotations
    return {"kind": kind, "metadata": meta}


def _status(code: int, message: str) -> web.Response:
    body = {"kind": "Status", "status": "Failure", "message": message, "code": code}
    return web.json_response(body, status=code)
