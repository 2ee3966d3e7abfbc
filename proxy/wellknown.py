"""Two values fixed outside this code, kept here once for every part that writes or checks them.

Nothing to import but this: the sidecar, the doctor, inject, the webhook and the local
issuer all read them, and the sidecar's image has only some of those packages.
"""

from __future__ import annotations

TOKEN_EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
"""Entra's: the audience a Workload ID assertion (the projected service-account token) must
carry, and the one a federated credential names."""

PROXY_UID = 1501
"""The images': the proxy runs as this uid and gid, and the init program's redirect exempts
its traffic so that it reaches the real IMDS. The init image does not ship this package; its
own default (`init.settings.DEFAULT_PROXY_UID`) must stay equal (tests/test_manifests.py)."""
