"""The webhook's listeners and lifecycle.

TLS listener: `POST /mutate-v1-pod` (upstream's path), `GET /healthz` (the process answers)
and `GET /readyz` (it can decide: the sidecar's form is known). Probing over the TLS port
proves the certificate loads. Plain listener: `GET /metrics`. SIGTERM stops accepting and
lets reviews in flight finish (the API server gives each at most its timeoutSeconds).
"""

from __future__ import annotations

import asyncio
import signal
import time

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.webhook import review
from proxy.webhook.certs import ReloadingCertificate
from proxy.webhook.kube import Api, ApiError
from proxy.webhook.metrics import WebhookMetrics
from proxy.webhook.mutate import Mutator
from proxy.webhook.settings import NATIVE_FROM, Settings

log = structlog.get_logger("proxy.webhook")
MAX_BODY = 4 * 1024 * 1024
"""Above etcd's 1.5 MiB object limit, with room for the AdmissionReview around it."""
VERSION_RETRY = 5.0


def build_app(mutator: Mutator, metrics: WebhookMetrics) -> web.Application:
    async def mutate(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            parsed = review.parse(await request.read())
        except review.MalformedReview as exc:
            metrics.reviews.labels("malformed").inc()
            log.warning("malformed AdmissionReview", reason=str(exc))
            return web.Response(status=400, text=f"malformed AdmissionReview: {exc}\n")
        outcome = await mutator.review(parsed)
        elapsed = time.perf_counter() - started
        metrics.reviews.labels(outcome.result).inc()
        metrics.seconds.observe(elapsed)
        log.info(
            "admission review",
            uid=parsed.uid,
            result=outcome.result,
            ms=round(elapsed * 1000, 1),
            **outcome.fields,
        )
        return web.json_response(outcome.answer)

    async def healthz(_: web.Request) -> web.StreamResponse:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.StreamResponse:
        if mutator.classic is None:
            return web.Response(status=503, text="the API server's version is not known yet\n")
        return web.Response(text="ok\n")

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post("/mutate-v1-pod", mutate)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def build_metrics_app(metrics: WebhookMetrics) -> web.Application:
    async def scrape(_: web.Request) -> web.StreamResponse:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    return app


async def learn_version(mutator: Mutator, api: Api) -> None:
    """`--sidecar auto`: native sidecars from API server 1.32 on; until known, not ready."""
    while mutator.classic is None:
        try:
            version = await api.server_version()
        except ApiError as exc:
            log.warning("cannot read the API server's version; trying again", reason=str(exc))
            await asyncio.sleep(VERSION_RETRY)
            continue
        mutator.classic = version < NATIVE_FROM
        log.info(
            "sidecar form chosen",
            server_version=f"{version[0]}.{version[1]}",
            sidecar="classic" if mutator.classic else "native",
        )


async def serve(settings: Settings, api: Api, cert: ReloadingCertificate) -> None:
    metrics = cert.metrics
    mutator = Mutator(settings, api, metrics)
    runner = web.AppRunner(build_app(mutator, metrics), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, ssl_context=cert.context)
    await site.start()
    metrics_runner: web.AppRunner | None = None
    if settings.metrics_port:
        metrics_runner = web.AppRunner(build_metrics_app(metrics), access_log=None)
        await metrics_runner.setup()
        await web.TCPSite(metrics_runner, settings.metrics_host, settings.metrics_port).start()
    log.info(
        "webhook listening",
        port=settings.port,
        metrics_port=settings.metrics_port,
        api_server=api.server,
        sidecar=settings.sidecar,
        on_error=settings.on_error,
        other_proxy=settings.other_proxy,
        pod_identity=settings.pod_identity,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    version_task = asyncio.create_task(learn_version(mutator, api))
    try:
        await stop.wait()
    finally:
        log.info("webhook stopping")
        version_task.cancel()
        await runner.cleanup()
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await api.close()
