"""One frozen settings object from the command line and the environment.

The upstream webhook injects `--proxy-port` and `--log-level` as arguments and the
identity as `AZURE_*` variables; both are read here and nowhere else. A bad value stops
the process at start with one line naming the setting (`ConfigError`), never later.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from proxy import __version__, cliparse
from proxy.identity_ids import (
    IdentitySpec,
    IdentitySpecError,
    is_client_id,
    is_tenant_id,
    parse_specs,
)

DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com/"
DEFAULT_HOST = "127.0.0.1"
"""Pod-local: only the pod's own containers reach the token port."""
DEFAULT_IMDS_UPSTREAM = "http://169.254.169.254"
DEFAULT_PROXY_PORT = 8000
"""Upstream's default `proxy-sidecar-port`."""
DEFAULT_METRICS_PORT = 14637
"""Off the ports apps use (8080, 9090, 9100...); why this one: README, "Ports"."""
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
DEFAULT_LOG_LEVEL = "info"

IDENTITY_SOURCE_ENV = "IMDS_PROXY_IDENTITY_SOURCE"
"""Set by `imds-proxy webhook`: where the pod's client id came from, for the report."""
IDENTITIES_ENV = "IMDS_PROXY_IDENTITIES"
"""Identity mappings from the environment: `--identity` specs separated by `;` or spaces."""


class ConfigError(Exception):
    """A setting is missing or malformed; the message names it and says what is wrong."""


EVENT_LOOPS = ("auto", "uvloop", "asyncio")
"""`--event-loop` values (`proxy.eventloop` runs them); here, so that reading flags does
not import asyncio (the `--probe` hook and the report and inject commands never need it)."""


@dataclass(frozen=True, slots=True)
class Settings:
    tenant_id: str
    federated_token_file: str
    client_id: str | None = None
    authority_host: str = DEFAULT_AUTHORITY_HOST
    ca_bundle: str | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PROXY_PORT
    imds_upstream: str | None = DEFAULT_IMDS_UPSTREAM
    """Where allowlisted, non-identity metadata requests go; None: not forwarded."""
    metrics_host: str = "0.0.0.0"
    metrics_port: int = DEFAULT_METRICS_PORT
    log_level: str = DEFAULT_LOG_LEVEL
    log_format: str = "json"
    shutdown_grace: float = 25.0
    """Under the pod's default 30 s terminationGracePeriodSeconds: exit before SIGKILL."""
    drain_idle: float = 3.0
    event_loop: str = "auto"
    """`auto` (uvloop when installed), `uvloop` or `asyncio`; see `proxy.eventloop`."""
    entra_timeout: float = 10.0
    """The whole exchange's deadline (connect, TLS, every read), not a per-read timeout."""
    new_resource_rate: float = 2.0
    """Exchanges per second for tokens not held yet (a token bucket; refreshes are free)."""
    new_resource_burst: int = 20
    expose_status: bool = False
    """Also serve /status and /report on the metrics listener (they name the identity)."""
    cache_max_entries: int = 1024
    rejected_ttl: float = 5.0
    propagation_window: float = 300.0
    prefetch_resources: tuple[str, ...] = field(default_factory=tuple)
    identities: tuple[IdentitySpec, ...] = field(default_factory=tuple)
    identity_header: str | None = field(default=None, repr=False)
    """The App Service endpoint's expected secret (env IDENTITY_HEADER); never printed."""
    identity_header_file: str | None = None
    identity_source: str | None = None
    """Where the webhook found the client id (env IMDS_PROXY_IDENTITY_SOURCE); reported."""


DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {f.name: f.default for f in fields(Settings) if f.default is not MISSING}
)
"""Every setting's default by field name: the flags' defaults are the settings' own, so
other commands read them here (or from the DEFAULT_* constants), never from the parser."""


def build_parser() -> argparse.ArgumentParser:
    parser = cliparse.Parser(
        prog="imds-proxy",
        description="Answer IMDS managed-identity token requests with Entra Workload ID tokens.",
        epilog="Environment: AZURE_TENANT_ID and AZURE_FEDERATED_TOKEN_FILE (required), "
        "AZURE_CLIENT_ID (the default identity), AZURE_AUTHORITY_HOST, REQUESTS_CA_BUNDLE, "
        "HTTPS_PROXY/NO_PROXY, IDENTITY_HEADER (the App Service endpoint's secret), "
        f"{IDENTITIES_ENV} (--identity specs separated by ';').",
    )
    add = parser.add_argument
    add(
        "--proxy-port",
        type=int,
        default=DEFAULTS["port"],
        help="port for IMDS requests (default %(default)s)",
    )
    add("--host", default=DEFAULTS["host"], help="address to bind (default %(default)s: pod-local)")
    add(
        "--log-level",
        default=DEFAULTS["log_level"],
        type=_log_level,
        help="debug, info, warning, error",
    )
    add("--log-format", default=DEFAULTS["log_format"], choices=("json", "console"))
    add(
        "--imds-upstream",
        default=DEFAULTS["imds_upstream"],
        help="where non-identity metadata requests (/metadata/instance, attested, "
        "loadbalancer, scheduledevents, versions) go; 'none' answers them with 404 "
        "(default %(default)s)",
    )
    add(
        "--metrics-port",
        type=int,
        default=DEFAULTS["metrics_port"],
        help="Prometheus port (default %(default)s); 0 turns it off",
    )
    add(
        "--metrics-host",
        default=DEFAULTS["metrics_host"],
        help="metrics address (default %(default)s)",
    )
    add(
        "--shutdown-grace",
        type=float,
        default=DEFAULTS["shutdown_grace"],
        help="on SIGTERM: seconds at most before exiting (drain, then in-flight requests)",
    )
    add(
        "--drain-idle",
        type=float,
        default=DEFAULTS["drain_idle"],
        help="on SIGTERM: keep serving until no request came for this many seconds",
    )
    add(
        "--event-loop",
        default=DEFAULTS["event_loop"],
        choices=EVENT_LOOPS,
        help="auto: uvloop when installed, else asyncio's loop (default %(default)s)",
    )
    add(
        "--entra-timeout",
        type=float,
        default=DEFAULTS["entra_timeout"],
        help="deadline in seconds for a whole exchange with Entra ID (connect, TLS, "
        "every read); a caller still waiting then gets 503 with Retry-After",
    )
    add(
        "--new-resource-rate",
        type=float,
        default=DEFAULTS["new_resource_rate"],
        help="exchanges per second for tokens not held yet, after a burst of "
        "--new-resource-burst; more callers get 429 with Retry-After (refreshes are never "
        "limited) (default %(default)s)",
    )
    add(
        "--new-resource-burst",
        type=int,
        default=DEFAULTS["new_resource_burst"],
        help="exchanges for tokens not held yet allowed at once (default %(default)s)",
    )
    add(
        "--expose-status",
        action="store_true",
        help="also serve /status and /report on the metrics listener; by default they are "
        "served on the pod-local token port only, because they name the identity",
    )
    add(
        "--cache-max-entries",
        type=int,
        default=DEFAULTS["cache_max_entries"],
        help="tokens kept at most (LRU)",
    )
    add(
        "--rejected-ttl",
        type=float,
        default=DEFAULTS["rejected_ttl"],
        help="seconds an Entra 4xx is answered from memory",
    )
    add(
        "--propagation-window",
        type=float,
        default=DEFAULTS["propagation_window"],
        help="seconds after an identity's first exchange during which 'no matching federated "
        "credential' is answered 503 and retried (a new credential propagating)",
    )
    add(
        "--prefetch-resource",
        action="append",
        default=[],
        metavar="RESOURCE",
        help="fetch a token for RESOURCE at start (repeatable)",
    )
    add(
        "--identity",
        action="append",
        default=[],
        metavar="CLIENT_ID[,object_id=OID][,resource_id=RID]",
        help="another identity of the pod (repeatable), with the object id or resource id "
        "callers may select it by when its tokens do not tell",
    )
    add(
        "--identity-header-file",
        metavar="PATH",
        help="file holding the secret App Service callers send (default: env IDENTITY_HEADER)",
    )
    add(
        "--probe",
        action="store_true",
        help="poll /readyz on --proxy-port every 0.2 s for up to 7 s (the upstream hook's "
        "7 tries, 1 s apart) and exit 0 when ready",
    )
    add("--version", action="version", version=f"imds-proxy {__version__}")
    return parser


def load(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """Validate flags and environment together; raises `ConfigError` on the first problem."""
    tenant = _required(environ, "AZURE_TENANT_ID")
    if not is_tenant_id(tenant):
        raise ConfigError("AZURE_TENANT_ID: must be a tenant GUID or domain name")
    token_file = _required(environ, "AZURE_FEDERATED_TOKEN_FILE")
    client_id = environ.get("AZURE_CLIENT_ID", "").strip() or None
    if client_id is not None and not is_client_id(client_id):
        raise ConfigError("AZURE_CLIENT_ID: must be an application (client) id, a GUID")
    authority_host = environ.get("AZURE_AUTHORITY_HOST", "").strip() or DEFAULT_AUTHORITY_HOST
    parts = urlsplit(authority_host)
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(
            "AZURE_AUTHORITY_HOST: must be an https URL such as https://login.microsoftonline.com/"
        )
    imds_upstream = _imds_upstream(args.imds_upstream)
    if args.log_level not in LOG_LEVELS:
        raise ConfigError(f"--log-level: must be one of {', '.join(LOG_LEVELS)}")
    _port("--proxy-port", args.proxy_port)
    if args.metrics_port != 0:
        _port("--metrics-port", args.metrics_port)
    for name, value in (
        ("--shutdown-grace", args.shutdown_grace),
        ("--drain-idle", args.drain_idle),
        ("--entra-timeout", args.entra_timeout),
        ("--rejected-ttl", args.rejected_ttl),
        ("--propagation-window", args.propagation_window),
    ):
        if not value >= 0:
            raise ConfigError(f"{name}: must not be negative")
    if not args.new_resource_rate > 0:
        raise ConfigError("--new-resource-rate: must be positive")
    if args.new_resource_burst < 1:
        raise ConfigError("--new-resource-burst: must be at least 1")
    if args.cache_max_entries < 1:
        raise ConfigError("--cache-max-entries: must be at least 1")
    prefetch = tuple(r.strip() for r in args.prefetch_resource)
    if any(not r for r in prefetch):
        raise ConfigError("--prefetch-resource: must not be empty")
    if prefetch and client_id is None:
        raise ConfigError("--prefetch-resource: needs AZURE_CLIENT_ID, the identity to fetch for")
    identities = _identities(args.identity, environ.get(IDENTITIES_ENV, ""))
    identity_header_file = (args.identity_header_file or "").strip() or None
    ca_bundle = (environ.get("REQUESTS_CA_BUNDLE") or environ.get("CURL_CA_BUNDLE") or "").strip()
    return Settings(
        tenant_id=tenant,
        federated_token_file=token_file,
        client_id=client_id,
        authority_host=authority_host,
        ca_bundle=ca_bundle or None,
        host=args.host,
        port=args.proxy_port,
        imds_upstream=imds_upstream,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        log_level=args.log_level,
        log_format=args.log_format,
        shutdown_grace=args.shutdown_grace,
        drain_idle=args.drain_idle,
        event_loop=args.event_loop,
        entra_timeout=args.entra_timeout,
        new_resource_rate=args.new_resource_rate,
        new_resource_burst=args.new_resource_burst,
        expose_status=args.expose_status,
        cache_max_entries=args.cache_max_entries,
        rejected_ttl=args.rejected_ttl,
        propagation_window=args.propagation_window,
        prefetch_resources=prefetch,
        identities=identities,
        identity_header=environ.get("IDENTITY_HEADER", "").strip() or None,
        identity_header_file=identity_header_file,
        identity_source=environ.get(IDENTITY_SOURCE_ENV, "").strip() or None,
    )


def parse(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    return load(build_parser().parse_args(argv), environ)


def _identities(flags: Sequence[str], env_value: str) -> tuple[IdentitySpec, ...]:
    """`--identity` flags, then the environment's specs."""
    given = [("--identity", spec) for spec in flags]
    given += [(IDENTITIES_ENV, spec) for spec in env_value.replace(";", " ").split()]
    try:
        return parse_specs(given)
    except IdentitySpecError as exc:
        raise ConfigError(str(exc)) from None


def _log_level(value: str) -> str:
    """Upstream's Go flag says `warn`; Python's logging says `warning`. Both mean one level."""
    value = value.strip().lower()
    return "warning" if value == "warn" else value


def _imds_upstream(value: str) -> str | None:
    if value.strip().lower() in ("none", "off", ""):
        return None
    upstream = urlsplit(value)
    if upstream.scheme not in ("http", "https") or not upstream.hostname:
        raise ConfigError(
            "--imds-upstream: must be an http URL such as http://169.254.169.254, or none"
        )
    return value.rstrip("/")


def _required(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name}: is not set")
    return value


def _port(name: str, value: int) -> None:
    if not 1 <= value <= 65535:
        raise ConfigError(f"{name}: must be a port number from 1 to 65535")
