"""Real SDK clients in other languages, built or installed once, run unmodified.

Every client lives in its own toolchain's cache outside the repository (Maven's ~/.m2, Go's
module cache, npm's cache, and a virtualenv for the Azure CLI under ``CACHE``), so the first
run on a machine downloads and later runs work from the cache; a download is retried a
bounded number of times. Each build happens once per test session (``_once``), and one
process at a time: parallel test workers wait for the first build, then find it done.

A client runs in a subprocess with a clean environment (``clean_env``): nothing that points
it anywhere but the metadata address, so an SDK cannot pick another managed-identity source
(IDENTITY_ENDPOINT, MSI_ENDPOINT, AZURE_FEDERATED_TOKEN_FILE...) by accident.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

TESTS = Path(__file__).resolve().parents[1]
CLIENTS = TESTS / "clients"
JAVA_PROJECT = CLIENTS / "java"
GO_PROJECT = CLIENTS / "go"
JS_PROJECT = TESTS / "js"
AZURE_CLI_VERSION = "2.91.0"

# Readable by other uids (the network-namespace tests run clients as an app's uid).
CACHE = Path(
    os.environ.get("IMDS_PROXY_TEST_CACHE")
    or (
        "/var/cache/imds-oidc-proxy-tests"
        if os.geteuid() == 0
        else Path.home() / ".cache" / "imds-oidc-proxy-tests"
    )
)
DOWNLOAD_ATTEMPTS = 3
BUILD_TIMEOUT = 900.0


class ClientUnavailable(RuntimeError):
    """A toolchain is not installed on this machine (tests skip, saying which)."""


class BuildFailed(RuntimeError):
    """A build or install failed after its retries (tests fail: it is not a skip)."""


def _run(
    argv: Sequence[str], cwd: Path, timeout: float, env: Mapping[str, str] | None = None
) -> str:
    """Run a build step; returns '' on success or the tail of its output."""
    done = subprocess.run(
        list(argv),
        cwd=cwd,
        env=None if env is None else dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return "" if done.returncode == 0 else (done.stdout + done.stderr)[-3000:]


def _with_retries(argv: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None) -> None:
    """A step that downloads: up to DOWNLOAD_ATTEMPTS tries, a short pause between them."""
    failure = ""
    for attempt in range(DOWNLOAD_ATTEMPTS):
        if attempt:
            time.sleep(5 * attempt)
        failure = _run(argv, cwd, BUILD_TIMEOUT, env)
        if not failure:
            return
    raise BuildFailed(f"{' '.join(argv)} failed {DOWNLOAD_ATTEMPTS} times:\n{failure}")


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ClientUnavailable(f"{tool} is not installed")
    return path


@contextlib.contextmanager
def _machine_lock(name: str) -> Iterator[None]:
    """Held while one process builds ``name``: builds write shared places (CACHE, the
    clients' folders), so a second test worker waits here and then finds the build done."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _once(build: Callable[[], T]) -> Callable[[], T]:
    """Build at most once per test session: the result, or the failure, is remembered (a
    download that failed its retries is not tried again by every test)."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    @functools.wraps(build)
    def run() -> T:
        if failure:
            raise failure[0]
        if not outcome:
            try:
                with _machine_lock(build.__name__):
                    outcome.append(build())
            except (ClientUnavailable, BuildFailed) as exc:
                failure.append(exc)
                raise
        return outcome[0]

    return run


def or_skip(build: Callable[[], T]) -> T:
    """A fixture's build: skipped, saying why, when its toolchain is not installed."""
    try:
        return build()
    except ClientUnavailable as exc:
        pytest.skip(str(exc))


def _up_to_date(output: Path, sources: Iterable[Path]) -> bool:
    return output.exists() and all(s.stat().st_mtime <= output.stat().st_mtime for s in sources)


@_once
def java_classpath() -> str:
    """The Java clients compiled, with their dependencies copied beside them: offline from
    ~/.m2 when it has them, online (with retries) otherwise; not again while the build is
    newer than the sources."""
    require("java")
    target = JAVA_PROJECT / "target"
    stamp = target / "lib" / ".complete"
    sources = [JAVA_PROJECT / "pom.xml", *(JAVA_PROJECT / "src").rglob("*.java")]
    if not _up_to_date(stamp, sources):
        mvn = [require("mvn"), "-B", "-q", "package"]
        if _run([*mvn, "-o"], JAVA_PROJECT, BUILD_TIMEOUT):
            _with_retries(mvn, JAVA_PROJECT)
        stamp.touch()
    return f"{target / 'classes'}{os.pathsep}{target / 'lib'}/*"


@_once
def go_client() -> Path:
    """One Go program for both Go SDKs (``-sdk azidentity|adal``); go.sum pins the modules."""
    binary = GO_PROJECT / "bin" / "get-token"
    sources = [GO_PROJECT / "go.mod", GO_PROJECT / "go.sum", *GO_PROJECT.glob("*.go")]
    if _up_to_date(binary, sources):
        return binary
    env = {**os.environ, "GOFLAGS": "-mod=readonly -buildvcs=false", "CGO_ENABLED": "0"}
    _with_retries([require("go"), "build", "-o", str(binary), "."], GO_PROJECT, env)
    return binary


@_once
def node_modules() -> Path:
    """tests/js's packages (npm registry, npm's own cache) installed once."""
    require("node")
    wanted = json.loads((JS_PROJECT / "package.json").read_text())["dependencies"]
    installed = JS_PROJECT / "node_modules"
    if not all((installed / name / "package.json").exists() for name in wanted):
        npm = [require("npm"), "install", "--no-audit", "--no-fund", "--loglevel=error"]
        _with_retries(npm, JS_PROJECT)
    return installed


@_once
def azure_cli() -> list[str]:
    """``az`` of AZURE_CLI_VERSION in its own virtualenv under CACHE (about 700 MB: installed
    once per machine, then reused); returns the command that runs it."""
    venv = CACHE / f"azure-cli-{AZURE_CLI_VERSION}"
    python = venv / "bin" / "python"
    if not python.exists():
        partial = venv.with_name(venv.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        CACHE.mkdir(parents=True, exist_ok=True)
        if failure := _run([sys.executable, "-m", "venv", str(partial)], CACHE, 120):
            raise BuildFailed(failure)
        pip = [str(partial / "bin" / "python"), "-m", "pip", "install", "-q"]
        _with_retries(
            [*pip, "--disable-pip-version-check", f"azure-cli=={AZURE_CLI_VERSION}"], CACHE
        )
        partial.rename(venv)  # a venv's python finds its site-packages relative to itself
    return [str(python), "-m", "azure.cli"]


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """An app container's environment: a PATH, a HOME, and only what the test adds."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", **extra}


def proxied_env(home: Path, proxy_base: str, **extra: str) -> dict[str, str]:
    """A clean environment whose plain-HTTP traffic goes to the proxy as its HTTP proxy: a
    client with a hard-coded IMDS address sends it absolute-form requests."""
    return clean_env(home, HTTP_PROXY=proxy_base, http_proxy=proxy_base, **extra)


def java_proxy_flags(port: int) -> list[str]:
    """The JVM's own proxy settings (it ignores HTTP_PROXY)."""
    return ["-Dhttp.proxyHost=127.0.0.1", f"-Dhttp.proxyPort={port}"]


def last_json_line(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The client's result line; a crash shows its output instead of a JSON error."""
    lines = done.stdout.strip().splitlines()
    if not lines or not lines[-1].startswith("{"):
        raise AssertionError(
            f"exit {done.returncode}, no result line:\n{done.stdout}{done.stderr[-3000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def run_client(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    timeout: float = 90.0,
    prefix: Sequence[str] = (),
) -> dict[str, Any]:
    """Run a client (under ``prefix``, e.g. a namespace and a uid); its result line."""
    done = subprocess.run(
        [*prefix, *argv],
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return last_json_line(done)
