"""The command line shows itself: every command listed with a line, each with its own --help,
mistakes in one line with exit 2, and the sidecar's upstream flags still need no command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy import cli

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ["run", "dev", "doctor", "report", "inject", "webhook"]


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


def test_help_lists_every_command_with_a_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    listed = out.split("commands:")[1].split("options:")[0]
    for name in COMMANDS:
        (line,) = [ln for ln in listed.splitlines() if ln.strip().startswith(name + " ")]
        assert len(line.split(None, 1)[1]) > 10, line
    assert list(cli.COMMANDS) == COMMANDS
    # The sidecar's own flags are still on the top-level help.
    assert "--proxy-port" in out and "--probe" in out


@pytest.mark.parametrize("name", COMMANDS)
def test_each_command_has_its_own_help(name: str) -> None:
    done = _run(name, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: imds-proxy {name}")


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["bogus"], "invalid choice: 'bogus'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--proxy-port", "eight"], "--proxy-port"),
        (["inject", "--bogus"], "imds-proxy inject: error: unrecognized arguments"),
        (["webhook", "--sidecar", "sometimes"], "imds-proxy webhook: error:"),
        (["report", "--days", "x"], "imds-proxy report: error:"),
        (["webhook", "--tenant-id", "a b", "--kubeconfig", "/x"], "--tenant-id: must be"),
    ],
)
def test_unknown_input_exits_2_with_one_line(argv: list[str], says: str) -> None:
    done = _run(*argv)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and says in done.stderr, done.stderr


def test_the_sidecar_flags_need_no_command() -> None:
    """The container entrypoint: `/proxy --proxy-port=8000 --log-level=info`, and --probe."""
    parsed = cli.build_parser().parse_args(["--proxy-port", "8123", "--log-level", "warn"])
    assert (parsed.command, parsed.proxy_port, parsed.log_level) == (None, 8123, "warning")
    assert cli.build_parser().parse_args(["--probe"]).probe is True
    # `run` is the same thing spelt out.
    assert _run("run", "--version").stdout == _run("--version").stdout
