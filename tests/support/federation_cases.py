"""Federation failures as the fake Entra ID produces them for real (no credential, an
unknown client, a token not valid yet, a forged signature, an unreachable issuer), and
what the tests of both tiers read back: Entra's call count, the answer, the log lines."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from harness.fake_entra import FakeEntra
from harness.proxy_process import ProxyHandle

ARM = "https://management.azure.com/"
META = {"Metadata": "true"}
WINDOW = 3.0
"""The `--propagation-window` the tests give the proxy."""
POLL = 5.0  # CachePolicy.propagation_poll


def entra_calls(entra: FakeEntra) -> int:
    total: int = entra.stats()["token_requests"]["total"]
    return total


def ask(proxy: ProxyHandle) -> requests.Response:
    return requests.get(proxy.url(ARM), headers=META, timeout=30)


def token_file(tmp_path: Path, token: str) -> str:
    path = tmp_path / "azure-identity-token"
    path.write_text(token)
    return str(path)


def no_credential(entra: FakeEntra, tmp_path: Path) -> dict[str, str]:
    entra.set_federated_credentials([])
    return entra.env()


def unknown_client(entra: FakeEntra, tmp_path: Path) -> dict[str, str]:
    return {**entra.env(), "AZURE_CLIENT_ID": str(uuid.uuid4())}


def not_yet_valid(entra: FakeEntra, tmp_path: Path) -> dict[str, str]:
    minted = entra.mint_assertion(issued_at=time.time() + 600)
    return {**entra.env(), "AZURE_FEDERATED_TOKEN_FILE": token_file(tmp_path, minted)}


def bad_signature(entra: FakeEntra, tmp_path: Path) -> dict[str, str]:
    header, payload, signature = entra.mint_assertion().split(".")
    forged = ".".join((header, payload, signature[::-1]))
    return {**entra.env(), "AZURE_FEDERATED_TOKEN_FILE": token_file(tmp_path, forged)}


def issuer_unreachable(entra: FakeEntra, tmp_path: Path) -> dict[str, str]:
    entra.behave(mode="issuer_unreachable")
    return entra.env()


Setup = Callable[[FakeEntra, Path], dict[str, str]]
FINAL_AT_ONCE: list[tuple[str, Setup, tuple[str, ...], str]] = [
    ("unknown_client", unknown_client, ("700016",), "azure.workload.identity/client-id"),
    ("assertion_time", not_yet_valid, ("700024",), "node's clock"),
    ("assertion_rejected", bad_signature, ("700027", "50027"), "JWKS"),
    ("issuer_unreachable", issuer_unreachable, ("90061",), "oidcIssuerProfile.issuerUrl"),
]


def log_lines(proxy: ProxyHandle, event: str) -> list[dict[str, Any]]:
    return [line for line in proxy.logs() if line["event"] == event]
