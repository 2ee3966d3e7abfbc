"""Process lifecycle: build the objects, serve, and stop gracefully on SIGTERM or SIGINT.

Start: the token listener is bound first, with nothing heavier than aiohttp loaded; MSAL,
requests and prometheus-client are imported in a worker thread once it listens
(`proxy.tokens.deferred`), and the metrics listener follows. A token request that
arrives earlier waits for that import, like any first exchange waits for Entra ID.

Stop (`serve`): a classic sidecar gets SIGTERM together with the app, which may still
need tokens while it drains; a native sidecar gets it once the app has exited. So the
token listener keeps answering until no request has arrived for `--drain-idle` seconds
(or `--shutdown-grace` runs out), then closes, lets in-flight requests finish within
what is left of the grace, cancels the rest and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import platform
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from aiohttp import web

from proxy import __version__, logs
from proxy.app import Proxy, ProxyHttp
from proxy.assertion import AssertionSource
from proxy.config import Settings
from proxy.counters import ExchangeMetrics, RequestMetrics
from proxy.eventloop import running_loop_name
from proxy.forward import Forwarder
from proxy.identities import IdentityDirectory
from proxy.logs import get_logger
from proxy.requestlog import RequestLog
from proxy.status import status_page
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
WORKER_THREADS = 4
"""Threads for blocking work (MSAL calls, token-file reads). asyncio's default grows with
the node's cores, not the pod's share; each thread keeps its stack and malloc arena."""
SA_EXPIRY_WARNING = 600.0
"""kubelet rotates at 80% of the token's life (12 minutes before a 1-hour token expires)."""


def user_agent() -> str:
    import msal

    return (
        f"imds-oidc-proxy/{__version__} msal/{msal.__version__} python/{platform.python_version()}"
    )


class ProxyServer:
    """The proxy as a running service: token listener, metrics listener, background work."""

    def __init__(self, settings: Settings) -> None:
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
            ),
        )
        self.forwarder = Forwarder(settings.imds_upstream)
        self.proxy = Proxy(
            settings,
            self.cache,
            self.assertion,
            self.forwarder,
            RequestMetrics(),
            identities=self.identities,
        )
        self.http: ProxyHttp | None = None
        self.registry: CollectorRegistry | None = None
        self._runners: list[web.BaseRunner] = []
        self._token_site: web.TCPSite | None = None
        self._token_server: web.Server | None = None
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
        handler = self.http = ProxyHttp(self.proxy, RequestLog(s.log_level, s.log_format))
        server = self._token_server = web.Server(handler, access_log=None)
        runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=s.shutdown_grace)
        await runner.setup()
        self._runners.append(runner)  # before binding: stop() cleans up even if that fails
        self._token_site = web.TCPSite(runner, s.host, s.port)
        await self._token_site.start()
        # Listening: now the heavy imports, off the loop, while /readyz already answers.
        exchange = await self.exchange.load()
        if s.metrics_port:
            registry = self.registry = await asyncio.to_thread(
                self._build_registry, running_loop_name()
            )
            metrics = web.AppRunner(
                self._metrics_app(registry),
                access_log=None,
                handle_signals=False,
                shutdown_timeout=1.0,
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
        if self.proxy.prefetch_keys:
            self._background.append(
                asyncio.create_task(self.cache.prefetch(self.proxy.prefetch_keys))
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
        """Close the token listener, give in-flight requests until `deadline` (monotonic;
        default: the whole grace from now), then close everything else."""
        started = time.monotonic()
        if deadline is None:
            deadline = started + self.settings.shutdown_grace
        if self._token_site is not None and self._token_server is not None:
            await self._token_site.stop()  # no new connections
            self._token_server.pre_shutdown()
            await self._token_server.shutdown(max(deadline - time.monotonic(), 0.0))
        for runner in self._runners:  # the token listener's has nothing left to wait for
            await runner.cleanup()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.cache.close()
        await self.forwarder.close()
        self.exchange.close()
        log.info("stopped the proxy server", seconds=round(time.monotonic() - started, 3))
        logs.stream().flush()

    async def _read_service_account(self) -> float | None:
        """The token's expiry, read in a worker thread; raises `CredentialUnavailable`."""
        try:
            expires_at = (await asyncio.to_thread(self.assertion.current)).expires_at
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
                expires_at = await self._read_service_account()
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

    def _metrics_app(self, registry: CollectorRegistry) -> web.Application:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        async def metrics(request: web.Request) -> web.Response:
            if request.path != "/metrics" or request.method != "GET":
                raise web.HTTPNotFound()
            with contextlib.suppress(CredentialUnavailable):  # absent: the gauge is left out
                await self._read_service_account()
            payload = generate_latest(registry)  # on the loop: the collector reads live state
            return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})

        async def report(request: web.Request) -> web.Response:
            report = self.proxy.callers.report()  # the migration report
            report["identity_source"] = self.settings.identity_source
            return web.json_response(report)

        async def status(request: web.Request) -> web.Response:
            return web.json_response(await status_page(self.proxy))  # readiness, last failure

        app = web.Application()
        app.router.add_get("/report", report)
        app.router.add_get("/status", status)
        app.router.add_route("*", "/{tail:.*}", metrics)
        return app


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, drain, then stop gracefully (see the module's text)."""
    loop = asyncio.get_running_loop()
    loop.set_default_executor(
        ThreadPoolExecutor(max_workers=WORKER_THREADS, thread_name_prefix="imds-proxy")
    )
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    server = ProxyServer(settings)
    deadline: float | None = None
    try:
        await server.start()
        await stopping.wait()
        deadline = time.monotonic() + settings.shutdown_grace
        log.info(
            "shutting down",
            grace_seconds=settings.shutdown_grace,
            drain_idle_seconds=settings.drain_idle,
        )
        await server.drain(settings.drain_idle, deadline)
    finally:
        with contextlib.suppress(Exception):
            await server.stop(deadline)
