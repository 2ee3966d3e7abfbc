"""The sidecar never takes its pod down: against the real process and a hostile fake Entra ID.

Entra hanging or trickling; SIGTERM with hundreds of requests in flight; idle sockets and
slowloris on the metrics port; storms of new resources. Each test bounds its own traffic
(counts and timeouts) and sends it to loopback only. Malformed requests that carry secrets,
Entra answering garbage or huge bodies, undecodable queries: tests/inprocess/
test_hostile_input.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import resource
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import requests

from harness.fake_entra import FakeEntra
from harness.proxy_process import ProxyProcess, running_proxy

ARM = "https://management.azure.com/"
META = {"Metadata": "true"}
PROBE_BUDGET = 1.0
"""What the kubelet gives a readiness probe (timeoutSeconds: 1)."""
HANG_DEADLINE = 8.0
"""--entra-timeout while Entra hangs: longer than the probes take (10 of them, under a
second each), shorter than the 30 s this test once waited."""


def timed_get(url: str, **kw: object) -> tuple[int, float]:
    started = time.monotonic()
    response = requests.get(url, timeout=PROBE_BUDGET * 3, **kw)  # type: ignore[arg-type]
    return response.status_code, time.monotonic() - started


def assert_probes_answer_fast(proxy: ProxyProcess, metrics: bool = True) -> None:
    for url in (proxy.base + "/readyz", proxy.base + "/healthz"):
        status, took = timed_get(url)
        assert status == 200 and took < PROBE_BUDGET, (url, status, took)
    if metrics:
        status, took = timed_get(f"http://127.0.0.1:{proxy.metrics_port}/metrics")
        assert status == 200 and took < PROBE_BUDGET, ("metrics", status, took)


async def _fire(urls: list[str], timeout: float) -> list[int | str]:
    """GET every URL at once; each result is a status code or the exception's name."""
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout),
        connector=aiohttp.TCPConnector(limit=0),  # every request on its own connection now
    ) as session:

        async def one(url: str) -> int | str:
            try:
                async with session.get(url, headers=META) as response:
                    await response.read()
                    return response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                return type(exc).__name__

        return list(await asyncio.gather(*(one(u) for u in urls)))


def fire_in_background(urls: list[str], timeout: float) -> Callable[[], list[int | str]]:
    """Start `_fire` in a thread now; call the result to wait for its answers."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(lambda: asyncio.run(_fire(urls, timeout)))
    pool.shutdown(wait=False)
    return lambda: future.result(timeout=timeout + 10)


def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


# -- probes never wait for Entra --------------------------------------------------------


def test_probes_and_metrics_answer_within_a_second_while_40_exchanges_hang(
    fake_entra: FakeEntra, tmp_path: Path
) -> None:
    fake_entra.behave(mode="hang")
    # The exchanges hang for their whole deadline: long enough for every probe below, with
    # room on a loaded machine, and no longer (the answers wait for it).
    args = [f"--entra-timeout={HANG_DEADLINE:g}", "--new-resource-burst=100"]
    with running_proxy(fake_entra.env(), tmp_path, args) as proxy:
        urls = [proxy.url(f"https://hang-{i}.example") for i in range(40)]
        results = fire_in_background(urls, timeout=HANG_DEADLINE + 10)
        wait_for(
            lambda: fake_entra.stats()["token_requests"]["in_flight"] >= 4,
            10,
            "the exchanges to reach the hanging Entra",
        )
        for _ in range(5):
            assert_probes_answer_fast(proxy)
        status = requests.get(proxy.base + "/status", timeout=PROBE_BUDGET).json()
        assert status["ready"] is True
        done = results()
        assert set(done) == {503}, done  # each at its deadline, never a dropped connection


def test_a_trickling_entra_costs_the_caller_its_deadline_and_nothing_more(
    fake_entra: FakeEntra, tmp_path: Path
) -> None:
    fake_entra.behave(mode="trickle", delay=1.0)
    with running_proxy(fake_entra.env(), tmp_path, ["--entra-timeout=3"]) as proxy:
        results = fire_in_background([proxy.url(f"https://t-{i}.example") for i in range(8)], 20)
        wait_for(
            lambda: fake_entra.stats()["token_requests"]["in_flight"] >= 4,
            10,
            "the exchanges to reach the trickling Entra",
        )
        assert_probes_answer_fast(proxy)
        results()
        started = time.monotonic()
        answer = requests.get(proxy.url("https://late.example"), headers=META, timeout=20)
        took = time.monotonic() - started
        assert answer.status_code == 503 and "Retry-After" in answer.headers
        assert took < 3 + 1.5, took
        assert_probes_answer_fast(proxy)
        fake_entra.behave(mode="normal", delay=0)
        after = requests.get(proxy.url("https://fresh.example"), headers=META, timeout=10)
        assert after.status_code == 200, "the worker threads were not pinned"


# -- shutdown within the grace -----------------------------------------------------------


def test_sigterm_with_200_requests_in_flight_exits_within_the_grace_answering_all(
    fake_entra: FakeEntra, tmp_path: Path
) -> None:
    fake_entra.behave(delay=30)  # slower than the grace: nothing finishes on its own
    args = ["--shutdown-grace=6", "--new-resource-burst=1000"]
    proxy = ProxyProcess(fake_entra.env(), tmp_path, args, drain_idle=3.0).start()
    assert proxy.proc is not None
    try:
        urls = [proxy.url(f"https://slow-{i}.example") for i in range(200)]
        results = fire_in_background(urls, timeout=30)
        wait_for(
            lambda: fake_entra.stats()["token_requests"]["in_flight"] >= 4,
            15,
            "the exchanges to reach the slow Entra",
        )
        time.sleep(1.0)  # every request has been accepted by now
        signalled = time.monotonic()
        proxy.proc.send_signal(signal.SIGTERM)
        code = proxy.proc.wait(timeout=20)
        took = time.monotonic() - signalled
        done = results()
    finally:
        proxy.stop()
    assert code == 0
    assert took < 7.0, took
    assert all(isinstance(r, int) for r in done), [r for r in done if not isinstance(r, int)]
    assert set(done) <= {503}, set(done)
    stopped = [line for line in proxy.logs() if line["event"] == "stopped the proxy server"]
    assert stopped


def test_sighup_drains_like_sigterm(fake_entra: FakeEntra, tmp_path: Path) -> None:
    proxy = ProxyProcess(fake_entra.env(), tmp_path).start()
    assert proxy.proc is not None
    requests.get(proxy.url(ARM), headers=META, timeout=10).raise_for_status()
    proxy.proc.send_signal(signal.SIGHUP)
    assert proxy.proc.wait(timeout=10) == 0
    proxy.stop()
    shutting = [line for line in proxy.logs() if line["event"] == "shutting down"]
    assert shutting and shutting[0]["signal"] == "SIGHUP"


# -- bounded listeners -------------------------------------------------------------------


def test_1100_idle_metrics_connections_under_1024_files_cost_no_token_answer(
    fake_entra: FakeEntra, tmp_path: Path
) -> None:
    prefix = ["prlimit", "--nofile=1024:1024", "--"]
    with running_proxy(fake_entra.env(), tmp_path, prefix=prefix) as proxy:
        assert proxy.proc is not None
        limits = Path(f"/proc/{proxy.proc.pid}/limits").read_text()
        assert any(
            line.startswith("Max open files") and line.split()[3] == "1024"
            for line in limits.splitlines()
        )
        requests.get(proxy.url(ARM), headers=META, timeout=10).raise_for_status()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), max(hard, 4096)))
        idle: list[socket.socket] = []
        try:
            for _ in range(1100):
                idle.append(socket.create_connection(("127.0.0.1", proxy.metrics_port), timeout=2))
            status, took = timed_get(proxy.url(ARM), headers=META)
            assert status == 200 and took < PROBE_BUDGET, took
            assert_probes_answer_fast(proxy, metrics=False)  # its slots are taken: refused
            open_fds = len(os.listdir(f"/proc/{proxy.proc.pid}/fd"))
            assert open_fds < 200, open_fds
            time.sleep(5.0 + 0.5)  # the header deadline frees the slots the idle ones held
            assert_probes_answer_fast(proxy)
        finally:
            for sock in idle:
                sock.close()
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_connection_that_never_completes_its_headers_is_closed(
    fake_entra: FakeEntra, tmp_path: Path
) -> None:
    with running_proxy(fake_entra.env(), tmp_path) as proxy:
        slow = socket.create_connection(("127.0.0.1", proxy.metrics_port), timeout=10)
        slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never the blank line
        started = time.monotonic()
        for _ in range(8):  # slowloris: a header every second keeps nothing alive
            try:
                slow.sendall(b"X-a: b\r\n")
            except OSError:
                break
            slow.settimeout(1.0)
            try:
                if slow.recv(1) == b"":
                    break
            except TimeoutError:
                continue
            except ConnectionResetError:  # closed with our unread header in its buffer
                break
        took = time.monotonic() - started
        slow.close()
        assert took < 5.0 + 1.5, took


# -- a storm of new resources is not an Entra storm


def test_1000_distinct_bogus_resources_in_5_seconds_cost_entra_a_bounded_few(
    fake_entra: FakeEntra, tmp_path: Path
) -> None:
    with running_proxy(fake_entra.env(), tmp_path) as proxy:
        started = time.monotonic()
        urls = [proxy.url(f"https://bogus-{i}.example") for i in range(1000)]
        statuses: list[int | str] = []
        for batch in range(5):  # 200 at a time, spread over about 5 s
            statuses += fire_in_background(urls[batch * 200 : (batch + 1) * 200], 30)()
            time.sleep(max(0.0, started + 1.0 * (batch + 1) - time.monotonic()))
        elapsed = time.monotonic() - started
        calls = fake_entra.stats()["token_requests"]["total"]
        assert calls <= 20 + 2 * elapsed + 2, (calls, elapsed)  # the bucket: burst + rate
        assert statuses.count(429) >= 1000 - calls
        assert requests.get(proxy.url(ARM), headers=META, timeout=10).status_code in (200, 429)
