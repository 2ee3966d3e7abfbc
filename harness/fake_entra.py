"""Handle on the local issuer (``python -m proxy.devissuer``) run as a subprocess.

Tests and benchmarks need a fake Entra ID that lives in its own process (its CPU and event
loop must not be the proxy's) and that they can steer. ``FakeEntra`` starts it, waits for
its one JSON line and wraps the ``/_control`` API; every call has a timeout. The tests'
fixtures (``fake_entra``, ``fake_entra_process``) are in tests/support/fixtures.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

from harness.processes import NotReady, first_line
from proxy.devissuer.exchange import object_id_of, resource_id_of
from proxy.devissuer.server import LocalIssuer

START_TIMEOUT = 30.0
CONTROL_TIMEOUT = 10.0
STOP_GRACE = 3.0
"""How long SIGTERM gets: an idle issuer exits at once, but one still holding requests it
was told to hang waits for them (aiohttp's shutdown) unless killed."""


class FakeEntraError(RuntimeError):
    """The issuer did not start, or a control call failed."""


class FakeEntra:
    """One local issuer process and its control API.

    ``prefix`` runs the issuer under another command, e.g. ``["ip", "netns", "exec", NS]``;
    then pass ``host``/``advertise_host`` addresses the test process can reach. Its stderr
    goes to ``<workdir>/issuer.log``.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        prefix: Sequence[str] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        advertise_host: str | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self.workdir = Path(workdir)
        self.command = [
            *prefix,
            sys.executable,
            "-m",
            "proxy.devissuer",
            "--host",
            host,
            "--port",
            str(port),
            "--workdir",
            str(self.workdir),
            *(["--advertise-host", advertise_host] if advertise_host else []),
            *extra_args,
        ]
        self._env = env
        self._start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._info: LocalIssuer | None = None
        self._session: requests.Session | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> FakeEntra:
        """Start the process and wait (bounded) for its JSON line."""
        if self._proc is not None:
            raise FakeEntraError("already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ if self._env is None else self._env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                cwd=Path(__file__).resolve().parent.parent,
            )
        try:
            try:
                line = first_line(self._proc, self._start_timeout, "issuer")
            except NotReady as exc:
                raise FakeEntraError(f"{exc}{self._log_tail()}") from None
            self._info = LocalIssuer.from_json(json.loads(line))
        except Exception:
            self.stop()
            raise
        session = requests.Session()
        session.trust_env = False  # no proxies, no REQUESTS_CA_BUNDLE override
        session.verify = self._info.ca_bundle
        self._session = session
        return self

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace")[-2000:]
            return f"; log tail:\n{text}" if text else ""
        return ""

    def stop(self, timeout: float = 10.0, grace: float = STOP_GRACE) -> int | None:
        """SIGTERM, wait up to `grace`, SIGKILL if needed; returns the exit code (None if
        never started)."""
        if self._session is not None:
            self._session.close()
            self._session = None
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.returncode

    def __enter__(self) -> FakeEntra:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- coordinates ---------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.workdir / "issuer.log"

    @property
    def info(self) -> LocalIssuer:
        if self._info is None:
            raise FakeEntraError("not started")
        return self._info

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise FakeEntraError("not started")
        return self._proc.pid

    @property
    def token_endpoint(self) -> str:
        return f"{self.info.authority_host}{self.info.tenant_id}/oauth2/v2.0/token"

    def object_id(self, client_id: str | None = None) -> str:
        """The ``oid`` in this issuer's tokens for ``client_id`` (default: the main one)."""
        return object_id_of(self.info.tenant_id, client_id or self.info.client_id)

    def resource_id(self, client_id: str | None = None) -> str:
        """The ``xms_mirid`` in this issuer's tokens for ``client_id`` (default: the main one)."""
        return resource_id_of(self.info.tenant_id, client_id or self.info.client_id)

    def env(self) -> dict[str, str]:
        """The proxy's environment: ``AZURE_*`` and ``REQUESTS_CA_BUNDLE``."""
        return self.info.proxy_environment()

    # -- control API -------------------------------------------------------------------

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        if self._session is None:
            raise FakeEntraError("not started")
        url = f"{self.info.control_url}/{path}"
        resp = self._session.request(method, url, json=body, timeout=CONTROL_TIMEOUT)
        if resp.status_code != 200:
            raise FakeEntraError(f"{method} {path}: {resp.status_code} {resp.text[:500]}")
        return resp.json()

    def stats(self) -> dict[str, Any]:
        """Counters: ``token_requests`` {total, by_outcome, by_client_id, by_scope,
        in_flight, max_in_flight}, ``openid_config_requests``, ``jwks_requests``."""
        result: dict[str, Any] = self._call("GET", "stats")
        return result

    def behave(self, **knobs: Any) -> dict[str, Any]:
        """Set knobs: delay, mode ("normal"|"throttle"|"fail"|"issuer_unreachable"),
        retry_after, status, token_lifetime, unknown_resources, count (mode applies to the
        next N requests)."""
        result: dict[str, Any] = self._call("POST", "behaviour", knobs)
        return result

    def reset(self) -> dict[str, Any]:
        """Counters, behaviour and federated credentials back to their start values."""
        result: dict[str, Any] = self._call("POST", "reset", {})
        return result

    def rotate(
        self, *, lifetime: float | None = None, subject: str | None = None
    ) -> dict[str, Any]:
        """Write a new projected token atomically (same path, new ``..data`` target)."""
        body: dict[str, Any] = {}
        if lifetime is not None:
            body["lifetime"] = lifetime
        if subject is not None:
            body["subject"] = subject
        result: dict[str, Any] = self._call("POST", "rotate", body)
        return result

    def set_federated_credentials(
        self, credentials: Sequence[Mapping[str, Any]], *, client_id: str | None = None
    ) -> dict[str, Any]:
        """Replace a client's credentials (``[{"issuer", "subject", "audiences"?,
        "effective_after"?}]``); default client: the main one. ``[]`` removes them all
        (AADSTS70021); ``effective_after`` seconds make one "propagate" that late."""
        body = {"client_id": client_id or self.info.client_id, "credentials": list(credentials)}
        result: dict[str, Any] = self._call("POST", "federated-credentials", body)
        return result

    def matching_credential(self, **overrides: Any) -> dict[str, Any]:
        """The credential that matches the written token, with ``overrides`` applied."""
        return {
            "issuer": self.info.service_account_issuer,
            "subject": self.info.service_account_subject,
            "audiences": [self.info.audience],
            **overrides,
        }

    def mint_assertion(self, **claims: Any) -> str:
        """A service-account token signed by the cluster key but not written anywhere;
        ``issuer``, ``subject``, ``audience``, ``lifetime``, ``issued_at`` are optional."""
        result: dict[str, str] = self._call("POST", "service-account-token", claims)
        return result["token"]
