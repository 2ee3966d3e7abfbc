"""The serving certificate, re-read when its files are replaced; no restart, no timer.

cert-manager and a mounted Secret both rotate by replacing files (a Secret volume swaps a
`..data` symlink), so the pair is stat'ed (through the links) at most once a second, during
a TLS handshake: the server context's SNI callback, which OpenSSL calls on every handshake,
with or without a server name, hands the connection the newest context. A new pair is
loaded into a fresh context and used only if it loads whole: a certificate replaced before
its key (a mismatched pair for a moment) keeps the old pair in use until both are there.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable

import structlog
from cryptography import x509

from proxy import watchedfile
from proxy.webhook.metrics import WebhookMetrics

log = structlog.get_logger("proxy.webhook.certs")
CHECK_EVERY = 1.0


class CertificateError(Exception):
    """The pair cannot be loaded at start; the message says which file and why."""


class ReloadingCertificate:
    """Owns the listener's SSL context; `context` is what the server is started with."""

    def __init__(
        self,
        cert_file: str,
        key_file: str,
        metrics: WebhookMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cert_file, self.key_file = cert_file, key_file
        self.metrics = metrics
        self._clock = clock
        self._checked = clock()
        self._stamp = self._files_stamp()
        try:
            self._current = self._load()
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise CertificateError(f"{cert_file} / {key_file}: {exc}") from exc
        self.context = self._new_context()
        self.context.sni_callback = self._on_handshake

    def _new_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def _load(self) -> ssl.SSLContext:
        context = self._new_context()
        with open(self.cert_file, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        not_after = cert.not_valid_after_utc.timestamp()
        self.metrics.cert_not_after.set(not_after)
        return context

    def _files_stamp(self) -> tuple[watchedfile.Stamp | None, ...]:
        """Both files' identities (None: not there now), so either one's swap is seen."""
        stamps: list[watchedfile.Stamp | None] = []
        for path in (self.cert_file, self.key_file):
            try:
                stamps.append(watchedfile.stamp(path))
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def check(self) -> None:
        """Load the files again if they changed since the last look."""
        self._checked = self._clock()
        stamp = self._files_stamp()
        if stamp == self._stamp:
            return
        try:
            self._current = self._load()
        except (OSError, ssl.SSLError, ValueError) as exc:
            # Mid-rotation, most likely; the stamp is kept so the next look tries again.
            self.metrics.cert_reloads.labels("failed").inc()
            log.warning("certificate not reloaded; the previous one stays", reason=str(exc))
            return
        self._stamp = stamp
        self.metrics.cert_reloads.labels("ok").inc()
        log.info("certificate reloaded", cert_file=self.cert_file)

    def _on_handshake(self, conn: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        if self._clock() - self._checked >= CHECK_EVERY:
            self.check()
        conn.context = self._current
