"""Process lifecycle: build the objects, serve, and stop gracefully on SIGTERM or SIGINT.

Start: the token listener is bound first, with nothing heavier than aiohttp loaded; MSAL,
requests and prometheus-client are imported in a worker thread once it listens
(`proxy.tokens.deferred`), and the metrics listener follows. A token request that
arrives earlier waits for that import, like any first exchange waits for Entra ID.

Stop (`serve`): a classic sidecar gets SIGTERM together with the app, which may still
need tokens while it drains; a native sidecar gets it once the app has exited. So the
token listener keeps answering until no request has arrived for `--drain-idle` seconds
(or all but the last `stop_reserve` of `--shutdown-grace` has passed), then closes; the
requests still waiting for Entra ID get until half that reserve is left, then a 503 with
Retry-After (never a dropped connection), and the process exits 0 within the grace,
whatever Entra does. SIGHUP is treated as SIGTERM: a graceful drain, never dropped work.

Probes and scrapes never wait for Entra: exchanges run in their own thread pool under a
total deadline (`proxy.tokens.entra`), readiness is computed from state on the loop, and
both listeners are bounded (`proxy.listener`).
"""

from __future__ import annotations

import asyncio
import contextlib
import platform
import resource
import signal
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from aiohttp import web

from proxy import __version__, logs
from proxy.app import Proxy, ProxyHttp, ServedIdentity
from proxy.appservice import AppServiceProtocol
from proxy.assertion import AssertionSource
from proxy.config import Settings
from proxy.counters import ExchangeMetrics, RequestMetrics
from proxy.eventloop import running_loop_name
from proxy.forward import Forwarder
from proxy.identities import IdentityDirectory
from proxy.identity_header import IdentityHeaderSecret
from proxy.imds import ImdsProtocol
from proxy.listener import BoundedServer
from proxy.logs import get_logger
from proxy.requestlog import RequestLog
from proxy.scrape import MetricsHttp
from proxy.tokenflow import TokenFlow
from proxy.tokens.cache import CachePolicy, TokenCache
from proxy.tokens.deferred import DeferredExchange
from proxy.tokens.errors import CredentialUnavailable
from proxy.tokens.lean import without_charset_guessing

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from proxy.tokens.entra import EntraExchange

log = get_logger("proxy.server")
SA_RETRY_INTERVAL = 30.0
"""While the service-account token is unreadable: how often to look again (and warn)."""
WORKER_THREADS = 2
"""Threads for the loop's own blocking work (the deferred imports). Exchanges have a pool
of their own. asyncio's default grows with the node's cores, not the pod's share; each
thread keeps its stack and malloc arena."""
TOKEN_MAX_CONNECTIONS = 512
"""Open connections on the token port (reachable from the pod only) at most."""
TOKEN_HEADER_TIMEOUT = 30.0
"""Seconds a token-port connection has to send a request's headers (and to sit idle)."""
METRICS_MAX_CONNECTIONS = 32
"""Open connections on the metrics port (reachable from the cluster network) at most."""
METRICS_HEADER_TIMEOUT = 5.0
"""Seconds a metrics connection has to send a request's headers (and to sit idle)."""
STOP_RESERVE = 2.0
"""Seconds at the end of the grace kept for answering the requests still waiting (503)
and exiting; at most a fifth of the grace."""
SA_EXPIRY_WARNING = 600.0
"""kubelet rotates at 80% of the token's life (12 minutes before a 1-hour token expires)."""


def user_agent() -> str:
    import msal

    return (
        f"imds-oidc-proxy/{__version__} msal/{msal.__version__} python/{platform.python_version()}"
    )


class ProxyServer:
    """The proxy as a running service: token listener, metrics listener, background work."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """`clock` and `sleep` are the token layer's (cache, windows, holds, countdowns):
        a test moves them instead of waiting."""
        self.settings = settings
        self.assertion = AssertionSource(settings.federated_token_file)
        self.exchange = DeferredExchange(self._build_exchange)
        self.exchange_metrics = ExchangeMetrics()
        self.identities = IdentityDirectory(settings.client_id, settings.identities)
        self.cache = TokenCache(
            self.exchange_metrics.metered(self.identities.learning(self.exchange)),
            CachePolicy(
                max_entries=settings.cache_max_entries,
                rejected_ttl=settings.rejected_ttl,
                propagation_window=settings.propagation_window,
                new_token_rate=settings.new_resource_rate,
                new_token_burst=settings.new_resource_burst,
            ),
            clock=clock,
            sleep=sleep,
        )
        self.forwarder = Forwarder(settings.imds_upstream)
        self.proxy = Proxy(
            ServedIdentity(
                settings.tenant_id,
                settings.client_id,
                settings.identity_source,
                tuple(settings.prefetch_resources),
            ),
            self.cache,
            self.assertion,
            self.forwarder,
            RequestMetrics(),
            identities=self.identities,
            clock=clock,
        )
        self.http: ProxyHttp | None = None
        self.registry: CollectorRegistry | None = None
        self._runners: list[web.BaseRunner] = []
        self._token_site: web.TCPSite | None = None
        self._token_server: BoundedServer | None = None
        self._service_account_expires_at: float | None = None
        """As last read off the loop (the watch, a scrape): a scrape must not read the file
        on the loop."""
        self._background: list[asyncio.Task[None]] = []

    def _build_exchange(self) -> EntraExchange:
        """Runs in a worker thread: the heavy imports (MSAL, requests) happen here."""
        without_charset_guessing()
        from proxy.tokens.entra import EntraExchange

        s = self.settings
        return EntraExchange(
            s.authority_host,
            self.assertion,
            ca_bundle=s.ca_bundle,
            timeout=s.entra_timeout,
            user_agent=user_agent(),
        )

    def _build_registry(self, event_loop: str) -> CollectorRegistry:
        """Runs in a worker thread too: prometheus-client is imported here."""
        from proxy.metrics import ProxyCollector, build_registry

        return build_registry(
            ProxyCollector(
                self.proxy.request_metrics,
                self.exchange_metrics,
                self.cache,
                lambda: self._service_account_expires_at,
                usage=self.proxy.callers,
                event_loop=event_loop,
            )
        )

    async def start(self) -> None:
        s = self.settings
        await self.forwarder.start()
        # Both token protocols share one flow: one table of remembered queries, one cache.
        handler = self.http = ProxyHttp(
            self.proxy,
            RequestLog(s.log_level, s.log_format),
            TokenFlow(self.cache, self.identities, self.proxy.clock),
            ImdsProtocol(s.tenant_id, s.client_id),
            AppServiceProtocol(
                IdentityHeaderSecret(s.identity_header, s.identity_header_file),
                s.tenant_id,
                s.client_id,
            ),
        )
        server = self._token_server = BoundedServer(
            handler,
            name="token",
            max_connections=TOKEN_MAX_CONNECTIONS,
            header_timeout=TOKEN_HEADER_TIMEOUT,
        )
        # `stop` waits for in-flight requests itself; the runner's own wait is a backstop.
        runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        self._runners.append(runner)  # before binding: stop() cleans up even if that fails
        # A burst of up to the cap waits in the kernel's accept queue, not in SYN retries
        # (aiohttp's default backlog is 128): a caller is answered or refused, never stalled.
        self._token_site = web.TCPSite(runner, s.host, s.port, backlog=TOKEN_MAX_CONNECTIONS)
        await self._token_site.start()
        # Listening: now the heavy imports, off the loop, while /readyz already answers.
        exchange = await self.exchange.load()
        if s.metrics_port:
            registry = self.registry = await asyncio.to_thread(
                self._build_registry, running_loop_name()
            )
            metrics = web.ServerRunner(
                BoundedServer(
                    MetricsHttp(
                        registry,
                        self.proxy,
                        self._read_service_account,
                        expose_status=s.expose_status,
                    ),
                    name="metrics",
                    max_connections=METRICS_MAX_CONNECTIONS,
                    header_timeout=METRICS_HEADER_TIMEOUT,
                ),
                handle_signals=False,
                shutdown_timeout=0.5,
            )
            await metrics.setup()
            self._runners.append(metrics)
            try:
                await web.TCPSite(metrics, s.metrics_host, s.metrics_port).start()
            except OSError as exc:
                # The pod shares one network namespace: an app already on this port must
                # not lose its tokens because metrics cannot be served.
                log.error("cannot serve metrics", port=s.metrics_port, reason=exc.strerror)
        log.info(
            "starting the proxy server",
            port=s.port,
            host=s.host,
            metrics_port=s.metrics_port or None,
            userAgent=exchange.user_agent,
            tenant_id=s.tenant_id,
            client_id=s.client_id,
            authority_host=s.authority_host,
            event_loop=running_loop_name(),
        )
        if self.proxy.identity.prefetch_keys:
            self._background.append(
                asyncio.create_task(self.cache.prefetch(self.proxy.identity.prefetch_keys))
            )
        self._background.append(asyncio.create_task(self._watch_service_account()))

    async def drain(self, idle: float, deadline: float) -> None:
        """Keep answering until no request has arrived for `idle` seconds (counted from
        now at the earliest) or the monotonic `deadline` passes. Sleeps, never polls."""
        quiet_from = time.perf_counter()  # the clock `ProxyHttp.last_arrival` is read on
        gap = deadline - time.monotonic()
        while True:
            last = self.http.last_arrival if self.http is not None else quiet_from
            end = min(max(quiet_from, last) + idle, quiet_from + gap)
            now = time.perf_counter()
            if now >= end:
                return
            await asyncio.sleep(end - now)

    async def stop(self, deadline: float | None = None) -> None:
        """Close the token listener, give in-flight requests until half the stop reserve
        is left before `deadline` (monotonic; default: the whole grace from now), answer
        the ones still waiting for Entra ID with 503, then close everything else."""
        started = time.monotonic()
        if deadline is None:
            deadline = started + self.settings.shutdown_grace
        answer_by = deadline - stop_reserve(self.settings.shutdown_grace) / 2
        loop = asyncio.get_running_loop()
        # At `answer_by`, waiting callers are answered 503 (the exchanges are abandoned).
        abandon = loop.call_later(
            max(answer_by - time.monotonic(), 0.0),
            lambda: self._background.append(loop.create_task(self.cache.abandon())),
        )
        if self._token_site is not None and self._token_server is not None:
            await self._token_site.stop()  # no new connections
            self._token_server.pre_shutdown()  # idle keep-alive connections close
            await self._token_server.shutdown(max(deadline - time.monotonic() - 0.25, 0.0))
        abandon.cancel()
        await self.cache.abandon()
        for runner in self._runners:  # the token listener's has nothing left to wait for
            await runner.cleanup()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.forwarder.close()
        await self.exchange.aclose()
        log.info("stopped the proxy server", seconds=round(time.monotonic() - started, 3))
        logs.stream().flush()

    def _read_service_account(self) -> float | None:
        """The token's expiry (a stat, and a read when kubelet replaced the file: on the
        loop, so that scrapes never wait behind exchanges); raises `CredentialUnavailable`."""
        try:
            expires_at = self.assertion.current().expires_at
        except CredentialUnavailable:
            self._service_account_expires_at = None
            raise
        self._service_account_expires_at = expires_at
        return expires_at

    async def _watch_service_account(self) -> None:
        """Warn before the pod loses its identity: kubelet should rotate the token long
        before it expires, so one close to expiry (or gone) means something is wrong.

        It wakes only when there is something to look at: when the warning would be due
        (kubelet has rotated by then if all is well), or every `SA_RETRY_INTERVAL` while
        the token is unreadable. An idle pod with a healthy token sleeps for most of an
        hour; scrapes read the file themselves, so the gauge stays current."""
        while True:
            try:
                expires_at = self._read_service_account()
            except CredentialUnavailable as exc:
                log.warning("service-account token unavailable", reason=exc.description)
                await asyncio.sleep(SA_RETRY_INTERVAL)
                continue
            if expires_at is None:  # no expiry claim: nothing will come due
                return
            left = expires_at - time.time()
            if left < SA_EXPIRY_WARNING:
                log.warning(
                    "service-account token expires soon",
                    seconds_left=int(left),
                    path=self.settings.federated_token_file,
                )
                await asyncio.sleep(SA_RETRY_INTERVAL if left > 0 else SA_EXPIRY_WARNING)
            else:
                await asyncio.sleep(left - SA_EXPIRY_WARNING + 1.0)


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, drain, then stop gracefully (see the module's text)."""
    loop = asyncio.get_running_loop()
    loop.set_default_executor(
        ThreadPoolExecutor(max_workers=WORKER_THREADS, thread_name_prefix="imds-proxy")
    )
    stopping: asyncio.Future[signal.Signals] = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, _first_signal, stopping, sig)
    raise_open_file_limit()
    server = ProxyServer(settings)
    deadline: float | None = None
    try:
        await server.start()
        received = await stopping
        deadline = time.monotonic() + settings.shutdown_grace
        log.info(
            "shutting down",
            signal=received.name,
            grace_seconds=settings.shutdown_grace,
            drain_idle_seconds=settings.drain_idle,
        )
        await server.drain(settings.drain_idle, deadline - stop_reserve(settings.shutdown_grace))
    finally:
        with contextlib.suppress(Exception):
            await server.stop(deadline)


def _first_signal(stopping: asyncio.Future[signal.Signals], sig: signal.Signals) -> None:
    if not stopping.done():
        stopping.set_result(sig)


def stop_reserve(grace: float) -> float:
    """The end of the grace kept for answering waiting requests and exiting."""
    return min(STOP_RESERVE, grace / 5)


def raise_open_file_limit() -> None:
    """Soft open-file limit up to the hard one (as Go programs do): the connection caps,
    not a low default, decide how many sockets the proxy may hold."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
