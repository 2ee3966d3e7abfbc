"""`imds-proxy report` as a command: where it looks, and what it says when nothing answers."""

from __future__ import annotations

import pytest

from proxy import cli, config
from proxy.report.cli import build_parser
from tests.proxy_process import free_port


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
