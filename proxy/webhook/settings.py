"""The webhook's settings: flags (and the two Workload ID variables), checked at start.

Defaults are the choices documented in README "Admission webhook": fail closed on what it
cannot read (`--on-error deny`), leave another webhook's proxy alone (`--other-proxy
keep`), carry pod-managed identities over from the pod's own namespace, and pick the
sidecar's form from the API server's version.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from proxy import cliparse, config
from proxy.identity_ids import is_tenant_id
from proxy.inject import additions
from proxy.webhook import podidentity

SIDECARS = ("auto", "native", "classic")
NATIVE_FROM = (1, 32)
"""Native sidecars are on by default from 1.29; with kubelets up to three minor versions
behind the API server, 1.32 is the first API server whose every node has them (upstream's
rule too)."""


class SettingsError(Exception):
    """A setting is wrong; the message names it."""


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 9443
    tls_cert_file: str = "/etc/webhook/certs/tls.crt"
    tls_key_file: str = "/etc/webhook/certs/tls.key"
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 8095
    tenant_id: str | None = None
    authority_host: str = config.DEFAULT_AUTHORITY_HOST
    proxy_image: str = additions.DEFAULT_IMAGE
    proxy_init_image: str = additions.DEFAULT_INIT_IMAGE
    proxy_log_level: str = config.DEFAULT_LOG_LEVEL
    proxy_metrics_port: int = config.DEFAULT_METRICS_PORT
    sidecar: str = "auto"
    on_error: str = "deny"
    other_proxy: str = "keep"
    pod_identity: str = "namespace"
    api_timeout: float = 3.0
    kubeconfig: str | None = None
    log_level: str = "info"
    log_format: str = "json"


_D = Settings()


def build_parser() -> argparse.ArgumentParser:
    parser = cliparse.Parser(
        prog="imds-proxy webhook",
        description="Serve the mutating admission webhook (AdmissionReview v1 at "
        "/mutate-v1-pod over TLS) that gives pods the Workload ID identity and the IMDS "
        "proxy sidecar from the Workload ID labels and annotations, a namespace label, or "
        "their old aadpodidbinding label.",
        epilog="Environment: AZURE_TENANT_ID and AZURE_AUTHORITY_HOST (defaults of "
        "--tenant-id and --authority-host), KUBECONFIG. In a pod it reads the API server "
        "with its service account.",
    )
    add = parser.add_argument
    add("--host", default=_D.host, help="address to bind (default %(default)s)")
    add("--port", type=int, default=_D.port, help="TLS port (default %(default)s)")
    add("--tls-cert-file", default=_D.tls_cert_file, help="re-read when replaced")
    add("--tls-key-file", default=_D.tls_key_file, help="re-read when replaced")
    add("--metrics-host", default=_D.metrics_host)
    add("--metrics-port", type=int, default=_D.metrics_port, help="Prometheus; 0: off")
    add("--tenant-id", help="AZURE_TENANT_ID for service accounts without tenant-id")
    add("--authority-host", help=f"AZURE_AUTHORITY_HOST (default {_D.authority_host})")
    add("--proxy-image", default=_D.proxy_image, help="default %(default)s")
    add("--proxy-init-image", default=_D.proxy_init_image, help="default %(default)s")
    add("--proxy-log-level", default=_D.proxy_log_level, choices=config.LOG_LEVELS)
    add("--proxy-metrics-port", type=int, default=_D.proxy_metrics_port, help="0: none")
    add(
        "--sidecar",
        choices=SIDECARS,
        default=_D.sidecar,
        help="native (init container with restartPolicy Always), classic (first container "
        "with a postStart probe), or auto: native when the API server is 1.32 or later",
    )
    add(
        "--on-error",
        choices=("deny", "allow"),
        default=_D.on_error,
        help="when the API server cannot be read: deny the pod with the reason (default), "
        "or allow it unchanged with a warning",
    )
    add(
        "--other-proxy",
        choices=("keep", "replace"),
        default=_D.other_proxy,
        help="a pod another webhook gave azwi-proxy: keep it (default, with a warning) or "
        "replace it with this project's",
    )
    add(
        "--pod-identity",
        choices=podidentity.SCOPES,
        default=_D.pod_identity,
        help="where an aadpodidbinding label's AzureIdentityBinding is looked for: the pod's "
        "namespace (default), every namespace (as aad-pod-identity did), or off",
    )
    add(
        "--api-timeout",
        type=float,
        default=_D.api_timeout,
        help="seconds for all API reads of one review (default %(default)s)",
    )
    add("--kubeconfig", help="off-cluster: the kubeconfig to use (default: in-cluster)")
    add("--log-level", default=_D.log_level, choices=config.LOG_LEVELS)
    add("--log-format", default=_D.log_format, choices=("json", "console"))
    return parser


def load(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    args = build_parser().parse_args(list(argv))
    for name, port in (("--port", args.port), ("--proxy-metrics-port", args.proxy_metrics_port)):
        if not 0 <= port <= 65535 or (name == "--port" and port == 0):
            raise SettingsError(f"{name}: must be a port number")
    if not 0 <= args.metrics_port <= 65535:
        raise SettingsError("--metrics-port: must be a port number, or 0")
    if not 0 < args.api_timeout <= 25:
        raise SettingsError("--api-timeout: must be more than 0 and at most 25 seconds")
    tenant = (args.tenant_id or environ.get("AZURE_TENANT_ID", "")).strip() or None
    if tenant is not None and not is_tenant_id(tenant):
        raise SettingsError("--tenant-id: must be a tenant GUID or domain name")
    authority = (args.authority_host or environ.get("AZURE_AUTHORITY_HOST", "")).strip()
    authority = authority or _D.authority_host
    if urlsplit(authority).scheme != "https":
        raise SettingsError("--authority-host: must be an https URL")
    return Settings(
        host=args.host,
        port=args.port,
        tls_cert_file=args.tls_cert_file,
        tls_key_file=args.tls_key_file,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        tenant_id=tenant,
        authority_host=authority,
        proxy_image=args.proxy_image,
        proxy_init_image=args.proxy_init_image,
        proxy_log_level=args.proxy_log_level,
        proxy_metrics_port=args.proxy_metrics_port,
        sidecar=args.sidecar,
        on_error=args.on_error,
        other_proxy=args.other_proxy,
        pod_identity=args.pod_identity,
        api_timeout=args.api_timeout,
        kubeconfig=args.kubeconfig,
        log_level=args.log_level,
        log_format=args.log_format,
    )
