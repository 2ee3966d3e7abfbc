"""The few Kubernetes API reads the webhook makes, over aiohttp: no client library.

Three GETs (a namespace, a service account, the aad-pod-identity objects) and the server's
version do not justify a Kubernetes client package in the install. Credentials come from
the pod (the service-account token and CA at the standard paths, `KUBERNETES_SERVICE_HOST`),
or from a kubeconfig (`--kubeconfig`, `KUBECONFIG`) for running it outside the cluster:
server, CA, and a bearer token or a client certificate (exec plugins are not supported).
The in-cluster token is read on every call: kubelet rotates it, and a read is cheaper than
a stale token's 401.
"""

from __future__ import annotations

import base64
import os
import re
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

IN_CLUSTER = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_VERSION = re.compile(r"^v?(\d+)\.(\d+)")


class ApiError(Exception):
    """A read failed; `status` is the HTTP status (None: no answer). Never holds a token."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ConfigError(Exception):
    """No usable API server credentials; the message says what is missing."""


@dataclass(frozen=True)
class Credentials:
    server: str
    ca_file: str | None = None
    insecure: bool = False
    token: str | None = None
    token_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https:"):
            return False
        if self.insecure:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context = ssl.create_default_context(cafile=self.ca_file)
        if self.client_cert and self.client_key:
            context.load_cert_chain(self.client_cert, self.client_key)
        return context

    def bearer(self) -> str | None:
        if self.token_file:
            return Path(self.token_file).read_text().strip()
        return self.token


def in_cluster(environ: Mapping[str, str], root: Path = IN_CLUSTER) -> Credentials:
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise ConfigError(
            "not in a cluster (KUBERNETES_SERVICE_HOST is not set) and no --kubeconfig given"
        )
    host = f"[{host}]" if ":" in host else host
    return Credentials(
        server=f"https://{host}:{port}",
        ca_file=str(root / "ca.crt"),
        token_file=str(root / "token"),
    )


def from_kubeconfig(path: str, workdir: Path) -> Credentials:
    """The current context's cluster and user. Embedded (`-data`) keys go to `workdir`."""
    from ruamel.yaml import YAML  # only off-cluster runs read YAML here

    try:
        doc = YAML(typ="safe").load(Path(path).read_text())
        context_name = doc["current-context"]
        context = _named(doc, "contexts", context_name)["context"]
        cluster = _named(doc, "clusters", context["cluster"])["cluster"]
        user = _named(doc, "users", context["user"]).get("user") or {}
    except (OSError, KeyError, TypeError, StopIteration) as exc:
        raise ConfigError(f"kubeconfig {path}: cannot read its current context ({exc!r})") from exc
    if "exec" in user or "auth-provider" in user:
        raise ConfigError(f"kubeconfig {path}: exec and auth-provider users are not supported")

    def file_or_data(obj: Mapping[str, Any], key: str) -> str | None:
        if obj.get(f"{key}-data"):
            target = workdir / key
            target.write_bytes(base64.b64decode(obj[f"{key}-data"]))
            target.chmod(0o600)
            return str(target)
        value = obj.get(key)
        if value and not os.path.isabs(value):
            value = os.path.join(os.path.dirname(os.path.abspath(path)), value)
        return str(value) if value else None

    return Credentials(
        server=str(cluster["server"]).rstrip("/"),
        ca_file=file_or_data(cluster, "certificate-authority"),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        token=user.get("token"),
        token_file=user.get("tokenFile"),
        client_cert=file_or_data(user, "client-certificate"),
        client_key=file_or_data(user, "client-key"),
    )


def _named(doc: Mapping[str, Any], section: str, name: str) -> dict[str, Any]:
    return next(item for item in doc[section] if item["name"] == name)


def credentials(kubeconfig: str | None, environ: Mapping[str, str]) -> Credentials:
    path = kubeconfig or environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
    if path:
        return from_kubeconfig(path, Path(tempfile.mkdtemp(prefix="imds-proxy-webhook-")))
    return in_cluster(environ)


class Api:
    """GET JSON from the API server; every call bounded by `timeout` seconds."""

    def __init__(self, creds: Credentials, timeout: float) -> None:
        self._creds = creds
        self._ssl = creds.ssl_context()
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    @property
    def server(self) -> str:
        return self._creds.server

    async def get(self, path: str) -> dict[str, Any]:
        """The object at `path`; `ApiError` with the status on anything but a JSON 200."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {"Accept": "application/json"}
        try:
            token = self._creds.bearer()
        except OSError as exc:
            raise ApiError(f"cannot read the API token file ({exc.strerror})") from exc
        if token:
            headers["Authorization"] = f"Bearer {token}"
        url = self._creds.server + path
        try:
            async with self._session.get(url, headers=headers, ssl=self._ssl) as response:
                if response.status != 200:
                    raise ApiError(await _reason(response), response.status)
                body = await response.json(content_type=None)
        except TimeoutError as exc:
            raise ApiError(f"GET {path}: no answer within {self._timeout.total:g} s") from exc
        except aiohttp.ClientError as exc:
            raise ApiError(f"GET {path}: {type(exc).__name__}: {exc}") from exc
        except ValueError as exc:
            raise ApiError(f"GET {path}: the answer is not JSON") from exc
        if not isinstance(body, dict):
            raise ApiError(f"GET {path}: the answer is not a JSON object")
        return body

    async def server_version(self) -> tuple[int, int]:
        """The API server's (major, minor), from /version's gitVersion."""
        body = await self.get("/version")
        found = _VERSION.match(str(body.get("gitVersion", "")))
        if not found:
            raise ApiError(f"/version: cannot read gitVersion {body.get('gitVersion')!r}")
        return int(found[1]), int(found[2])

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


async def _reason(response: aiohttp.ClientResponse) -> str:
    """The API server's Status message (it names the object, never a credential)."""
    try:
        body = await response.json(content_type=None)
        message = body.get("message") if isinstance(body, dict) else None
    except (ValueError, aiohttp.ClientError):
        message = None
    return f"GET {response.url.path}: {response.status} {message or response.reason}"
