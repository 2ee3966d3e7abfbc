"""The tests that run the proxy or the init program as another uid pass from a checkout other
users cannot enter, as under /root (root only): the committed HEAD is cloned into a fresh
``mktemp -d`` directory (mode 0700) and its ``other_user`` tests run there, with a venv that
lives in that directory too."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from harness.other_users import BASE_PYTHON, DIST_NAME, REPO, closed_ancestor, copy_venv
from tests.support.netns import requires_root

pytestmark = requires_root

# The run takes well under a minute; the bound only stops a hung one.
RUN_TIMEOUT = 300.0
NESTED = "IMDS_PROXY_IN_PRIVATE_CHECKOUT"


def git(*args: str) -> str:
    done = subprocess.run(["git", *args], check=True, capture_output=True, text=True, timeout=60)
    return done.stdout.strip()


def run_bounded(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """Exit code and output of ``argv``; past RUN_TIMEOUT it is interrupted (so pytest tears
    its namespaces down), then killed with its whole session."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate(timeout=10)
        output += f"\n(stopped after {RUN_TIMEOUT:g} s)"
    return proc.returncode, output


def test_other_user_tests_pass_from_a_private_checkout() -> None:
    if os.environ.get(NESTED):
        pytest.skip("already running inside a private checkout")
    head = git("-C", str(REPO), "rev-parse", "HEAD")
    with tempfile.TemporaryDirectory(prefix="imds-proxy-private-") as tmp:
        private = Path(tmp)
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
        clone = private / "repo"
        git("clone", "--quiet", "--no-checkout", str(REPO), str(clone))
        git("-C", str(clone), "checkout", "--quiet", "--detach", head)
        assert closed_ancestor(clone / "proxy" / "__init__.py") == private
        # What `make test` would have: a venv in the private directory, the clone installed
        # editable (a path in site-packages), the same packages as this venv.
        site = copy_venv(private / "venv", BASE_PYTHON)
        (site / f"__editable__.{DIST_NAME}.pth").write_text(f"{clone}\n")
        pytest_argv = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "other_user"]
        code, output = run_bounded(
            [str(private / "venv" / "bin" / "python"), *pytest_argv, "tests"],
            cwd=clone,
            env={**os.environ, NESTED: "1"},
        )
    summary = output.strip().splitlines()[-1]
    assert code == 0, output
    passed = re.search(r"(\d+) passed", summary)
    assert passed is not None and int(passed.group(1)) >= 10, output
    assert "skipped" not in summary, output
