"""`imds-proxy report` as a command: where it looks, and what it says when nothing answers."""

from __future__ import annotations

from typing import Any

import pytest

from harness.proxy_process import free_port
from proxy import cli, config
from proxy.report.cli import build_parser, render


def test_it_asks_the_port_the_proxy_listens_on_by_default() -> None:
    settings = config.parse([], {"AZURE_TENANT_ID": "t", "AZURE_FEDERATED_TOKEN_FILE": "/f"})
    assert build_parser().parse_args([]).proxy_port == settings.port


def test_no_proxy_answering_is_one_clear_line_and_exit_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = free_port()
    assert cli.main(["report", f"--proxy-port={port}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"imds-proxy report: cannot read http://127.0.0.1:{port}/report: ")
    assert err.count("\n") == 1


def test_the_identity_the_webhook_chose_is_reported() -> None:
    """The webhook tells the proxy where its client id came from; the report says it."""
    source = (
        "client id 0b8f... from aadpodidbinding web: AzureIdentityBinding a/b -> AzureIdentity a/c"
    )
    env = {"AZURE_TENANT_ID": "t", "AZURE_FEDERATED_TOKEN_FILE": "/f"}
    settings = config.parse([], {**env, config.IDENTITY_SOURCE_ENV: source})
    assert settings.identity_source == source
    assert config.parse([], env).identity_source is None
    report: dict[str, Any] = {
        "generated_at": 1.0e9,
        "started_at": 1.0e9,
        "last_token_request_at": None,
        "token_requests": 0,
        "callers": [],
        "identity_source": source,
    }
    lines = render(report, 7).splitlines()
    assert lines[1] == f"Identity: {source}"
    assert "Identity:" not in render({**report, "identity_source": None}, 7)
