"""The command line in-process: modes, messages and exit codes that need neither root nor
iptables (the real thing runs in tests/test_init_netns.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from init import cli


def test_dry_run_prints_the_transaction_and_needs_nothing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert cli.main(["--dry-run"], env={"PROXY_PORT": "8123"}) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith("*nat\n")
    assert out.endswith("COMMIT\n")
    assert "REDIRECT --to-ports 8123" in out


@pytest.mark.parametrize(
    ("name", "value"),
    [("PROXY_PORT", "abc"), ("PROXY_UID", "-5"), ("METADATA_IP", "1.2.3"), ("METADATA_PORT", "0")],
)
@pytest.mark.parametrize("mode", [[], ["--dry-run"], ["--check"], ["--cleanup"]])
def test_invalid_settings_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], mode: list[str], name: str, value: str
) -> None:
    assert cli.main(mode, env={name: value}) == cli.EXIT_CONFIG
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"imds-proxy-init: error: {name}={value!r} ")
    assert captured.err.count("\n") == 1


def test_modes_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        cli.main(["--check", "--cleanup"], env={})
    assert raised.value.code == cli.EXIT_CONFIG
    assert "not allowed with" in capsys.readouterr().err


def test_help_documents_variables_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        cli.main(["--help"], env={})
    assert raised.value.code == 0
    text = capsys.readouterr().out
    for word in ("PROXY_PORT", "METADATA_IP", "METADATA_PORT", "PROXY_UID", "IPTABLES_BACKEND"):
        assert word in text
    for code in range(7):
        assert f"\n  {code}  " in text


def test_without_net_admin_exit_3_before_touching_iptables(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "has_net_admin", lambda: False)
    monkeypatch.setattr(cli, "discover", pytest.fail)
    for mode in ([], ["--check"], ["--cleanup"]):
        assert cli.main(mode, env={}) == cli.EXIT_PERMISSION
        assert "lacks CAP_NET_ADMIN" in capsys.readouterr().err


def test_no_iptables_on_path_exits_4(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(cli, "has_net_admin", lambda: True)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert cli.main([], env={}) == cli.EXIT_NO_IPTABLES
    err = capsys.readouterr().err
    assert err.startswith("imds-proxy-init: error: no iptables on PATH")
    assert err.count("\n") == 1
