"""Throwaway network namespaces for root-only tests: a pod, and a fake IMDS next to it.

Topology (every name unique per test, everything removed afterwards, even on failure)::

    pod ns                                   imds ns
    lo up (127.0.0.1)                        lo up, METADATA_IP/32 on lo
    veth0 169.254.100.1/30  <---- veth ---->  veth0 169.254.100.2/30
    route METADATA_IP/32 via 169.254.100.2

so a connect() to METADATA_IP from the pod leaves through the veth, as it would leave a real
pod for the node's IMDS, and nothing the tests do reaches the host's own network. The
metadata address exists only inside the imds namespace.

Servers and clients are small Python programs run with this interpreter (the project venv)
through ``ip netns exec``, optionally as another uid through ``setpriv``. A program given as
``sys.executable`` runs, for another uid, from the install every user can reach
(``harness/other_users.py``), with ``/`` as its working directory: it never reads the checkout.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.other_users import cwd_for, python_for
from proxy.wellknown import PROXY_UID as PROXY_UID  # re-exported to the netns tests

METADATA_IP = "169.254.169.254"
POD_VETH_ADDR = "169.254.100.1"
IMDS_VETH_ADDR = "169.254.100.2"
PROXY_PORT = 8000
OTHER_METADATA_PORT = 8080

# Absolute, so that a test may hand the program under test a PATH without them.
IP = shutil.which("ip") or "/usr/sbin/ip"
SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"
TIMEOUT = 15.0

requires_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: creates network namespaces, veths and iptables rules"
)

_names = itertools.count()


def unique_name(prefix: str) -> str:
    """A namespace name no other test (or concurrent test run) uses."""
    return f"{prefix}-{os.getpid()}-{next(_names)}"


def _ip(*args: str) -> None:
    subprocess.run([IP, *args], check=True, capture_output=True, text=True, timeout=TIMEOUT)


@dataclass
class Netns:
    """One network namespace, and the processes started in it (stopped on removal)."""

    name: str
    _started: list[subprocess.Popen[str]] = field(default_factory=list)

    def argv(self, argv: Sequence[str], user: int | None = None) -> list[str]:
        """``argv`` wrapped to run in this namespace, as ``user`` (uid and gid) if given."""
        wrapped = [IP, "netns", "exec", self.name]
        program = list(argv)
        if user is not None:
            wrapped += [SETPRIV, f"--reuid={user}", f"--regid={user}", "--clear-groups", "--"]
            if program and program[0] == sys.executable:
                program[0] = python_for(user)
        return wrapped + program

    def run(
        self,
        argv: Sequence[str],
        *,
        user: int | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        timeout: float = TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.argv(argv, user),
            env=None if env is None else dict(env),
            cwd=cwd_for(user),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{argv} in {self.name} exited {done.returncode}:\n{done.stdout}{done.stderr}"
            )
        return done

    def popen(
        self,
        argv: Sequence[str],
        *,
        user: int | None = None,
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
    ) -> subprocess.Popen[str]:
        """Start a long-running process here; it is stopped when the namespace is removed.

        Its output goes to a pipe (read it, e.g. with wait_for_line), or to ``log`` for a
        process that talks a lot and is never read from.
        """
        with contextlib.ExitStack() as files:
            output = files.enter_context(open(log, "ab")) if log else subprocess.PIPE
            proc = subprocess.Popen(
                self.argv(argv, user),
                env=None if env is None else dict(env),
                cwd=cwd_for(user),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        self._started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self._started:
            stop(proc)
        self._started.clear()


def stop(proc: subprocess.Popen[str]) -> None:
    """Stop a process started by Netns.popen (the whole session: ip, setpriv, the program)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    if proc.stdout is not None:
        proc.stdout.close()


@contextlib.contextmanager
def netns(prefix: str, *, loopback_up: bool = True) -> Iterator[Netns]:
    """A new, empty network namespace; removed on exit together with what ran in it."""
    ns = Netns(unique_name(prefix))
    _ip("netns", "add", ns.name)
    try:
        if loopback_up:
            _ip("-n", ns.name, "link", "set", "lo", "up")
        yield ns
    finally:
        ns.stop_all()
        _kill_leftovers(ns.name)
        subprocess.run([IP, "netns", "del", ns.name], capture_output=True, timeout=TIMEOUT)


def _kill_leftovers(name: str) -> None:
    pids = subprocess.run(
        [IP, "netns", "pids", name], capture_output=True, text=True, timeout=TIMEOUT
    ).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


@dataclass
class PodNetwork:
    pod: Netns
    imds: Netns


@contextlib.contextmanager
def pod_network() -> Iterator[PodNetwork]:
    """A pod namespace that reaches METADATA_IP over a veth into an imds namespace."""
    with netns("azwi-pod") as pod, netns("azwi-imds") as imds:
        _ip(
            "-n",
            pod.name,
            "link",
            "add",
            "veth0",
            "type",
            "veth",
            "peer",
            "name",
            "veth0",
            "netns",
            imds.name,
        )
        _ip("-n", pod.name, "addr", "add", f"{POD_VETH_ADDR}/30", "dev", "veth0")
        _ip("-n", imds.name, "addr", "add", f"{IMDS_VETH_ADDR}/30", "dev", "veth0")
        _ip("-n", imds.name, "addr", "add", f"{METADATA_IP}/32", "dev", "lo")
        _ip("-n", pod.name, "link", "set", "veth0", "up")
        _ip("-n", imds.name, "link", "set", "veth0", "up")
        _ip("-n", pod.name, "route", "add", f"{METADATA_IP}/32", "via", IMDS_VETH_ADDR)
        yield PodNetwork(pod=pod, imds=imds)


# A tiny HTTP server: one listener per "host:port" argument, each answering every GET with JSON
# naming the server (its label) and the port that took the request, so a test can tell which
# listener a connection really reached. The fake IMDS ("imds") also answers /metadata/instance
# with an IMDS-like "compute" object.
_SERVER = r"""
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

label = sys.argv[1]

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        port = self.server.server_address[1]
        body = {"served_by": label, "port": port, "path": self.path}
        if label == "imds" and self.path.split("?")[0] == "/metadata/instance":
            body["compute"] = {"name": "fake-imds-vm", "location": "netnsland"}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

servers = []
for spec in sys.argv[2:]:
    host, port = spec.rsplit(":", 1)
    servers.append(ThreadingHTTPServer((host, int(port)), Handler))
for server in servers:
    threading.Thread(target=server.serve_forever, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

# GET a URL (argv: url, timeout, then "Name: value" headers) with no proxy from the
# environment; print the body, or "ERROR ..." and exit 1.
_CLIENT = r"""
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
request = urllib.request.Request(sys.argv[1])
for header in sys.argv[3:]:
    name, value = header.split(":", 1)
    request.add_header(name.strip(), value.strip())
try:
    with opener.open(request, timeout=float(sys.argv[2])) as response:
        print(response.read().decode())
except Exception as exc:
    print(f"ERROR {type(exc).__name__}: {exc}")
    sys.exit(1)
"""


def start_server(ns: Netns, label: str, *listen: str) -> subprocess.Popen[str]:
    """Start the JSON server in ``ns`` on each ``host:port``; return once it listens."""
    proc = ns.popen([sys.executable, "-c", _SERVER, label, *listen])
    wait_for_line(proc, "ready")
    return proc


def start_fake_imds(net: PodNetwork) -> subprocess.Popen[str]:
    """The "real IMDS": METADATA_IP on port 80 and on OTHER_METADATA_PORT, in the imds ns."""
    return start_server(
        net.imds, "imds", f"{METADATA_IP}:80", f"{METADATA_IP}:{OTHER_METADATA_PORT}"
    )


def start_stand_in_proxy(net: PodNetwork, port: int = PROXY_PORT) -> subprocess.Popen[str]:
    """Something listening where the redirect points: 127.0.0.1:port in the pod ns."""
    return start_server(net.pod, "proxy", f"127.0.0.1:{port}")


def wait_for_line(proc: subprocess.Popen[str], expected: str, timeout: float = TIMEOUT) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if line.strip() == expected:
                return
    raise AssertionError(f"process did not print {expected!r} in {timeout} s; output: {seen}")


def http_get(
    ns: Netns,
    url: str,
    *,
    user: int | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> dict[str, Any]:
    """GET ``url`` from inside ``ns`` (as ``user``); the JSON body, or {"error": ...}."""
    header_args = [f"{name}: {value}" for name, value in (headers or {}).items()]
    done = ns.run(
        [sys.executable, "-c", _CLIENT, url, str(timeout), *header_args],
        user=user,
        check=False,
        timeout=timeout + TIMEOUT,
    )
    if done.returncode != 0:
        return {"error": (done.stdout + done.stderr).strip()}
    body: dict[str, Any] = json.loads(done.stdout)
    return body


def iptables_available(backend: str) -> bool:
    return all(shutil.which(f"iptables-{backend}-{tool}") for tool in ("save", "restore"))


def backend_param(backend: str) -> Any:
    """A pytest param for ``backend`` that skips when its binaries are not installed."""
    return pytest.param(
        backend,
        id=backend,
        marks=pytest.mark.skipif(
            not iptables_available(backend),
            reason=f"iptables-{backend}-save/-restore not installed (Debian package iptables)",
        ),
    )


BACKENDS = [backend_param("nft"), backend_param("legacy")]


def init_env(backend: str | None = None, **overrides: str) -> dict[str, str]:
    """The environment for the init program: ours, without inherited settings, plus overrides."""
    names = ("PROXY_PORT", "METADATA_IP", "METADATA_PORT", "PROXY_UID", "IPTABLES_BACKEND")
    env = {key: value for key, value in os.environ.items() if key not in names}
    if backend is not None:
        env["IPTABLES_BACKEND"] = backend
    env.update(overrides)
    return env


def run_init(
    ns: Netns,
    *args: str,
    env: Mapping[str, str],
    user: int | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m init`` inside ``ns``; the caller checks the exit code."""
    return ns.run([sys.executable, "-m", "init", *args], env=env, user=user, check=False)


def nat_table(ns: Netns, backend: str) -> str:
    """``iptables-save -t nat`` in ``ns``, without comments and counters, for comparisons."""
    text = ns.run([f"iptables-{backend}-save", "-t", "nat"]).stdout
    lines = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if line.startswith(":"):
            line = line.rsplit(" ", 1)[0]
        lines.append(line)
    return "\n".join(lines) + "\n"
