"""Process lifecycle: build the objects, serve, and stop gracefully on SIGTERM or SIGINT.

Stopping closes the listeners first (no new requests), lets in-flight requests finish
within the grace period (a token exchange under way still answers its caller), then
cancels what remains and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import platform
import signal
import time

import msal
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from proxy import __version__, logs
from proxy.app import Proxy, ProxyHttp
from proxy.assertion import AssertionSource
from proxy.config import Settings
from proxy.forward import Forwarder
from proxy.identities import IdentityDirectory
from proxy.logs import get_logger
from proxy.metrics import ExchangeMetrics, ProxyCollector, RequestMetrics, build_registry
from proxy.requestlog import RequestLog
from proxy.status import status_page
from proxy.tokens.cache import CachePolicy, TokenCache
from proxy.tokens.entra import EntraExchange
from proxy.tokens.errors import CredentialUnavailable

log = get_logger("proxy.server")
SA_CHECK_INTERVAL = 30.0
SA_EXPIRY_WARNING = 600.0
"""kubelet rotates at 80% of the token's life (12 minutes before a 1-hour token expires)."""
USER_AGENT = (
    f"imds-oidc-proxy/{__version__} msal/{msal.__version__} python/{platform.python_version()}"
)


class ProxyServer:
    """The proxy as a running service: token listener, metrics listener, background work."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.assertion = AssertionSource(settings.federated_token_file)
        self.exchange = EntraExchange(
            settings.authority_host,
            self.assertion,
            ca_bundle=settings.ca_bundle,
            timeout=settings.entra_timeout,
            user_agent=USER_AGENT,
        )
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
        self.registry = build_registry(
            ProxyCollector(
                self.proxy.request_metrics,
                self.exchange_metrics,
                self.cache,
                lambda: self._service_account_expires_at,
                usage=self.proxy.callers,
            )
        )
        self._runners: list[web.BaseRunner] = []
        self._service_account_expires_at: float | None = None
        """As the watch last read it: a scrape must not read the file on the loop."""
        self._background: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        s = self.settings
        await self.forwarder.start()
        grace = s.shutdown_grace
        handler = ProxyHttp(self.proxy, RequestLog(s.log_level, s.log_format))
        runner = web.ServerRunner(
            web.Server(handler, access_log=None), handle_signals=False, shutdown_timeout=grace
        )
        await runner.setup()
        self._runners.append(runner)  # before binding: stop() cleans up even if that fails
        await web.TCPSite(runner, s.host, s.port).start()
        if s.metrics_port:
            metrics = web.AppRunner(
                self._metrics_app(), access_log=None, handle_signals=False, shutdown_timeout=1.0
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
            userAgent=USER_AGENT,
            tenant_id=s.tenant_id,
            client_id=s.client_id,
            authority_host=s.authority_host,
        )
        if self.proxy.prefetch_keys:
            self._background.append(
                asyncio.create_task(self.cache.prefetch(self.proxy.prefetch_keys))
            )
        self._background.append(asyncio.create_task(self._watch_service_account()))
        self._background.append(asyncio.create_task(logs.flush_periodically()))

    async def stop(self) -> None:
        started = time.monotonic()
        for runner in self._runners:  # token listener first: in-flight answers finish
            await runner.cleanup()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.cache.close()
        await self.forwarder.close()
        self.exchange.close()
        log.info("stopped the proxy server", seconds=round(time.monotonic() - started, 3))
        logs.stream().flush()

    async def _watch_service_account(self) -> None:
        """Warn before the pod loses its identity: kubelet should rotate the token long
        before it expires, so one close to expiry (or gone) means something is wrong."""
        while True:
            try:
                expires_at = (await asyncio.to_thread(self.assertion.current)).expires_at
            except CredentialUnavailable as exc:
                self._service_account_expires_at = None
                log.warning("service-account token unavailable", reason=exc.description)
            else:
                self._service_account_expires_at = expires_at
                left = None if expires_at is None else expires_at - time.time()
                if left is not None and left < SA_EXPIRY_WARNING:
                    log.warning(
                        "service-account token expires soon",
                        seconds_left=int(left),
                        path=self.settings.federated_token_file,
                    )
            await asyncio.sleep(SA_CHECK_INTERVAL)

    def _metrics_app(self) -> web.Application:
        registry: CollectorRegistry = self.registry

        async def metrics(request: web.Request) -> web.Response:
            if request.path != "/metrics" or request.method != "GET":
                raise web.HTTPNotFound()
            payload = generate_latest(registry)  # on the loop: the collector reads live state
            return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})

        async def report(request: web.Request) -> web.Response:
            return web.json_response(self.proxy.callers.report())  # the migration report

        async def status(request: web.Request) -> web.Response:
            return web.json_response(await status_page(self.proxy))  # readiness, last failure

        app = web.Application()
        app.router.add_get("/report", report)
        app.router.add_get("/status", status)
        app.router.add_route("*", "/{tail:.*}", metrics)
        return app


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    server = ProxyServer(settings)
    try:
        await server.start()
        await stopping.wait()
        log.info("shutting down", grace_seconds=settings.shutdown_grace)
    finally:
        with contextlib.suppress(Exception):
            await server.stop()
