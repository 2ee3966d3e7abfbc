"""The real `imds-proxy` as a subprocess, and a loopback stand-in for the real IMDS.

End-to-end tests drive the process a pod would run: its own interpreter, its own event
loop, its stdout captured to a file so tests can read its log lines. The stand-in IMDS
listens on loopback, so forwarding is tested without ever touching the real IMDS address.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import requests

from harness.background_server import BackgroundServer
from harness.other_users import cwd_for, python_for
from harness.processes import NotReady, answering
from proxy.imds import TOKEN_PATH

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ProxyHandle:
    """What a test holds of a running proxy, a process or in process alike: its URLs, its
    log lines and its metrics; `with` starts and stops it."""

    port: int
    metrics_port: int

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> object:
        raise NotImplementedError

    def log_text(self) -> str:
        raise NotImplementedError

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, resource: str | None = None, **query: str) -> str:
        params = {"api-version": "2018-02-01", **({"resource": resource} if resource else {})}
        params.update(query)
        return self.base + TOKEN_PATH + "?" + "&".join(f"{k}={v}" for k, v in params.items())

    def logs(self) -> list[dict[str, Any]]:
        """Every JSON log line so far (all lines must be JSON: that is checked too)."""
        return [json.loads(line) for line in self.log_text().splitlines() if line.strip()]

    def metrics(self) -> str:
        return requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ProxyProcess(ProxyHandle):
    """One running proxy; `url(...)` builds request URLs, `logs()` parses its JSON lines."""

    def __init__(
        self,
        env: Mapping[str, str],
        workdir: Path,
        args: Sequence[str] = (),
        *,
        metrics: bool = True,
        imds_upstream: str | None = None,
        prefix: Sequence[str] = (),
        user: int | None = None,
        drain_idle: float = 0.0,
    ) -> None:
        """`drain_idle` 0 by default: a test's stop need not wait for quiet (the drain on
        SIGTERM is tested with its own values)."""
        self.port = free_port()
        self.metrics_port = free_port() if metrics else 0
        self.log_path = workdir / f"proxy-{self.port}.log"
        upstream = imds_upstream or "http://127.0.0.1:9"  # loopback: never the real IMDS
        self.command = [
            *prefix,
            python_for(user),
            "-m",
            "proxy",
            f"--proxy-port={self.port}",
            f"--metrics-port={self.metrics_port}",
            f"--imds-upstream={upstream}",
            f"--drain-idle={drain_idle:g}",
            *args,
        ]
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1"}
        self.env.update(env)
        self._user = user
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = False) -> ProxyProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log = log
        self.proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=cwd_for(self._user),
            user=self._user,
            group=self._user,
        )
        self._wait("/readyz" if wait_ready else "/healthz")
        self._wait_for_metrics()
        return self

    def _wait(self, path: str) -> None:
        assert self.proc is not None
        try:
            answering(self.proc, self.base + path, START_TIMEOUT, "proxy")
        except NotReady as exc:
            raise RuntimeError(f"{exc}:\n{self.log_text()}") from None

    def _wait_for_metrics(self) -> None:
        """The metrics listener opens after the token listener (once the heavy imports are
        done): wait until it accepts, or the proxy says it could not bind it."""
        if not self.metrics_port:
            return
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.metrics_port), timeout=1).close()
                return
            if "cannot serve metrics" in self.log_text():
                return
            time.sleep(0.02)
        raise RuntimeError(f"metrics listener not up in {START_TIMEOUT} s:\n{self.log_text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the process and wait for it; returns its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class FakeImds(BackgroundServer):
    """A loopback stand-in for the real IMDS that echoes what it received."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                seen = {
                    "method": self.command,
                    "path": self.path,
                    "headers": dict(self.headers),
                    "body": body,
                }
                outer.requests.append(seen)
                payload = json.dumps({"compute": {"name": "fake-imds-vm"}, "seen": seen}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Fake-Imds", "1")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self.serve_in_background(server)


@contextlib.contextmanager
def running_proxy(
    env: Mapping[str, str], workdir: Path, args: Sequence[str] = (), **kw: Any
) -> Iterator[ProxyProcess]:
    proxy = ProxyProcess(env, workdir, args, **kw).start()
    try:
        yield proxy
    finally:
        proxy.stop()
