"""`imds-proxy webhook`: settings, credentials and certificate checked, then serve.

Exit codes: 0 stopped by SIGTERM; 2 a bad setting, unusable API credentials or a
certificate that does not load (one line naming it); 1 the port cannot be bound.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence

from proxy import logs

PROG = "imds-proxy webhook"


def main(argv: Sequence[str]) -> int:
    from proxy.webhook import certs, kube, settings
    from proxy.webhook.metrics import WebhookMetrics

    try:
        config = settings.load(argv, os.environ)
        creds = kube.credentials(config.kubeconfig, os.environ)
        metrics = WebhookMetrics()
        cert = certs.ReloadingCertificate(config.tls_cert_file, config.tls_key_file, metrics)
    except (settings.SettingsError, kube.ConfigError, certs.CertificateError) as exc:
        print(f"{PROG}: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(config.log_level, config.log_format)
    from proxy.webhook.server import serve

    try:
        asyncio.run(serve(config, kube.Api(creds, config.api_timeout), cert))
    except OSError as exc:
        logs.get_logger("proxy.webhook").error("cannot start the webhook", reason=str(exc))
        return 1
    return 0
