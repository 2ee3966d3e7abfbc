"""`make bench`: cached-hit throughput, latency, Entra calls and memory of the real proxy.

The proxy process runs pinned to core 0 and wrk drives it from core 1, so the figures
describe the proxy, not the load generator. A bare aiohttp server on the same core is the
ceiling it is compared with. Shared machines are noisy, so the bare server and each
proxy configuration take turns for several rounds; medians are reported, and each ratio
compares a proxy run with the bare run of the same round. Targets print PASS or FAIL but
never fail the command: this measures, it does not gate.

    python -m benchmarks.run [--rounds 3] [--duration 10] [--connections 64]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import requests

from benchmarks import footprint, memory, stampede, wrk
from harness.fake_entra import FakeEntra
from harness.processes import answering
from harness.proxy_process import ROOT, ProxyProcess, free_port
from proxy.imds import TOKEN_PATH

RESOURCE = "https://management.azure.com/"
METADATA = {"Metadata": "true"}
SERVER_CORE = 0
CLIENT_CORE = 1
START_TIMEOUT = 20.0
STAMPEDE_DELAY = 0.3
SETTLE = 0.2
"""Seconds between the warm-up answer and reading idle RSS, for the loop to go quiet."""
RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"

# Targets: a proxy figure against the bare server's, or against an absolute bound.
MIN_THROUGHPUT_RATIO = 1.0
MIN_CPU_RATIO = 1.0
"""Bare CPU per request over the proxy's: the proxy may cost no more than the ceiling."""
MAX_P99_RATIO = 1.5
MAX_ENTRA_PER_1K = 1.0
MAX_RSS_RATIO = 1.10
MAX_START_RATIO = 1.5
"""Spawn to /readyz 200, over spawn to a bound port for `import aiohttp` alone."""
MAX_IDLE_WAKEUPS = 10
MAX_IDLE_TICKS = 0
MAX_IDLE_RSS_MIB = 40.0
MAX_GROWTH_MIB = 2.0
REJECTED_PREFIX = "https://rejected.example/"


@dataclass(frozen=True)
class Config:
    """One server to measure: the bare ceiling or the proxy with extra arguments."""

    name: str
    proxy_args: tuple[str, ...] | None  # None: the bare server
    bare_args: tuple[str, ...] = ()


CONFIGS = (
    Config("bare", None),
    Config("bare-uvloop", None, ("--uvloop",)),
    Config("proxy-info", ()),
    Config("proxy-warning", ("--log-level", "warning")),
)


@dataclass(frozen=True)
class Options:
    rounds: int
    duration: float
    connections: int
    stampede: int
    start_rounds: int = 5
    idle: float = 60.0
    hits: int = 1_000_000
    rejected: int = 10_000


# -- processes --------------------------------------------------------------------------


def pin(core: int) -> list[str]:
    """`taskset -c core` when this process may use that core, else nothing (noted in output)."""
    return ["taskset", "-c", str(core)] if core in os.sched_getaffinity(0) else []


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # loopback only: no HTTP(S)_PROXY detour
    return session


def fetch_token(url: str) -> requests.Response:
    """One token request; raises unless the answer is 200."""
    with _session() as session:
        response = session.get(url, headers=METADATA, timeout=30)
    if response.status_code != 200:
        raise RuntimeError(f"GET {url}: {response.status_code} {response.text[:300]}")
    return response


@contextlib.contextmanager
def running_proxy(entra: FakeEntra, workdir: Path, args: Sequence[str]) -> Iterator[ProxyProcess]:
    """The proxy on the server core, stdout to a file as a container runtime would keep it."""
    proxy = ProxyProcess(entra.env(), workdir, args, prefix=pin(SERVER_CORE))
    try:
        proxy.start()
        yield proxy
    finally:
        if proxy.proc is not None:
            proxy.stop()


@contextlib.contextmanager
def running_bare(
    workdir: Path, body_size: int, args: Sequence[str] = ()
) -> Iterator[tuple[int, str]]:
    """The bare server on the server core; yields its pid and token URL."""
    port = free_port()
    command = [
        *pin(SERVER_CORE),
        sys.executable,
        "-m",
        "benchmarks.bare_server",
        f"--port={port}",
        f"--body-size={body_size}",
        *args,
    ]
    url = f"http://127.0.0.1:{port}/metadata/identity/oauth2/token?api-version=2018-02-01"
    with open(workdir / f"bare-{port}.log", "ab") as log:
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
        )
    try:
        answering(proc, url, START_TIMEOUT, "bare server")
        yield proc.pid, url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of `pid`, from /proc/PID/stat.

    CPU per request barely moves when other work shares the machine, unlike requests/s,
    which also measures how much of the core the scheduler gave the server.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def entra_calls(entra: FakeEntra) -> int:
    total: int = entra.stats()["token_requests"]["total"]
    return total


# -- measurements -------------------------------------------------------------------------


def load(pid: int, url: str, opts: Options) -> dict[str, Any]:
    """One wrk run, with the server's CPU time per request over it."""
    cpu_before = cpu_seconds(pid)
    result = wrk.run(
        url,
        duration=opts.duration,
        connections=opts.connections,
        headers=METADATA,
        prefix=pin(CLIENT_CORE),
    )
    cpu = cpu_seconds(pid) - cpu_before
    return {**result.as_dict(), "cpu_us_per_request": 1e6 * cpu / max(result.requests, 1)}


def measure_bare(
    workdir: Path, body_size: int, opts: Options, args: Sequence[str] = ()
) -> dict[str, Any]:
    with running_bare(workdir, body_size, args) as (pid, url):
        answer = fetch_token(url)
        time.sleep(SETTLE)
        rss_idle = memory.rss_kib(pid)
        return {
            "body_bytes": len(answer.content),
            "rss_idle_kib": rss_idle,
            "wrk": load(pid, url, opts),
            "rss_after_kib": memory.rss_kib(pid),
        }


def measure_proxy(
    entra: FakeEntra, workdir: Path, args: Sequence[str], opts: Options
) -> dict[str, Any]:
    """Fresh process, one warm-up token (fills the cache), then wrk on cached hits."""
    with running_proxy(entra, workdir, args) as proxy:
        assert proxy.proc is not None
        pid = proxy.proc.pid
        url = proxy.url(RESOURCE)
        answer = fetch_token(url)
        time.sleep(SETTLE)
        rss_idle = memory.rss_kib(pid)
        calls_before = entra_calls(entra)
        result = load(pid, url, opts)
        calls = entra_calls(entra) - calls_before
        return {
            "body_bytes": len(answer.content),
            "wrk": result,
            "entra_calls": calls,
            "entra_per_1k": 1000 * calls / max(result["requests"], 1),
            "rss_idle_kib": rss_idle,
            "rss_after_kib": memory.rss_kib(pid),
            "log_bytes": proxy.log_path.stat().st_size,
        }


def measure_stampede(entra: FakeEntra, workdir: Path, count: int) -> dict[str, Any]:
    """A fresh proxy, a slow Entra, `count` concurrent first requests: how many calls?"""
    entra.behave(delay=STAMPEDE_DELAY)
    try:
        with running_proxy(entra, workdir, ()) as proxy:
            url = proxy.url(RESOURCE)
            before = entra_calls(entra)
            result = stampede.run(url, count)
            calls = entra_calls(entra) - before
            answer = fetch_token(url)  # cached by now: its size is what the bare server sends
    finally:
        entra.behave(delay=0)
    return {
        **result.as_dict(),
        "entra_calls": calls,
        "body_bytes": len(answer.content),
        "content_type": answer.headers.get("Content-Type"),
    }


def measure_start(entra: FakeEntra, workdir: Path, rounds: int) -> dict[str, Any]:
    """Spawn to ready, the proxy (/readyz 200) and the bare listener taking turns."""
    bare: list[float] = []
    proxy: list[float] = []
    for _ in range(rounds):
        port = free_port()
        bare.append(
            footprint.time_to_ready(
                footprint.bare_listener_command(pin(SERVER_CORE), port), None, port, None, ROOT
            )
        )
        process = ProxyProcess(entra.env(), workdir, (), prefix=pin(SERVER_CORE))
        proxy.append(
            footprint.time_to_ready(process.command, process.env, process.port, "/readyz", ROOT)
        )
    return {
        "bare_s": bare,
        "proxy_s": proxy,
        "bare_median_s": _median(bare),
        "proxy_median_s": _median(proxy),
        "ratio": _median([p / b for p, b in zip(proxy, bare, strict=True)]),
    }


def measure_idle(entra: FakeEntra, workdir: Path, seconds: float) -> dict[str, Any]:
    """One token, then nothing: what the process does on its own."""
    with running_proxy(entra, workdir, ()) as proxy:
        assert proxy.proc is not None
        fetch_token(proxy.url(RESOURCE))
        time.sleep(1.0)  # the answer's own follow-up (log flush, keep-alive close) settles
        return footprint.idle(proxy.proc.pid, seconds)


def measure_hit_growth(entra: FakeEntra, workdir: Path, opts: Options) -> dict[str, Any]:
    """RSS after one token, then after `opts.hits` cached hits from wrk (in runs of
    `opts.duration` seconds)."""
    with running_proxy(entra, workdir, ()) as proxy:
        assert proxy.proc is not None
        pid = proxy.proc.pid
        url = proxy.url(RESOURCE)
        fetch_token(url)
        time.sleep(SETTLE)
        idle_kib = memory.rss_kib(pid)
        done = runs = 0
        first_run_kib = None
        while done < opts.hits and runs < 100:
            result = wrk.run(
                url,
                duration=opts.duration,
                connections=opts.connections,
                headers=METADATA,
                prefix=pin(CLIENT_CORE),
            )
            done += result.requests
            runs += 1
            if first_run_kib is None:
                first_run_kib = memory.rss_kib(pid)
        after_kib = memory.rss_kib(pid)
    return {
        "hits": done,
        "rss_idle_kib": idle_kib,
        "rss_after_first_run_kib": first_run_kib,
        "rss_after_kib": after_kib,
        "growth_kib": after_kib - idle_kib,
        "growth_after_first_run_kib": after_kib - (first_run_kib or idle_kib),
    }


def measure_rejected_growth(entra: FakeEntra, workdir: Path, count: int) -> dict[str, Any]:
    """RSS after one token, then after `count` distinct resources Entra ID rejects."""
    resources = [f"{REJECTED_PREFIX}{i}" for i in range(count)]
    entra.behave(unknown_resources=resources)
    try:
        with running_proxy(entra, workdir, ()) as proxy:
            assert proxy.proc is not None
            pid = proxy.proc.pid
            fetch_token(proxy.url(RESOURCE))
            time.sleep(SETTLE)
            idle_kib = memory.rss_kib(pid)
            first = max(count // 10, 1)  # the first tenth warms the error paths up
            statuses = footprint.distinct_resources(proxy.base + TOKEN_PATH, resources[:first])
            warm_kib = memory.rss_kib(pid)
            more = footprint.distinct_resources(proxy.base + TOKEN_PATH, resources[first:])
            for status, n in more.items():
                statuses[status] = statuses.get(status, 0) + n
            time.sleep(SETTLE)
            after_kib = memory.rss_kib(pid)
    finally:
        entra.behave(unknown_resources=[])
    return {
        "resources": count,
        "statuses": statuses,
        "rss_idle_kib": idle_kib,
        "rss_after_first_tenth_kib": warm_kib,
        "rss_after_kib": after_kib,
        "growth_kib": after_kib - idle_kib,
        "growth_after_first_tenth_kib": after_kib - warm_kib,
    }


# -- summary ------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(rounds: list[dict[str, Any]], baseline_kib: float) -> dict[str, dict[str, Any]]:
    """Medians per configuration; ratios are per round (against that round's bare run)."""
    summary: dict[str, dict[str, Any]] = {}
    for config in CONFIGS:
        runs = [r[config.name] for r in rounds]
        bares = [r["bare"] for r in rounds]
        figures: dict[str, Any] = {
            "requests_per_s": _median([x["wrk"]["requests_per_s"] for x in runs]),
            "p50_ms": _median([x["wrk"]["percentiles_ms"]["50"] for x in runs]),
            "p99_ms": _median([x["wrk"]["percentiles_ms"]["99"] for x in runs]),
            "cpu_us_per_request": _median([x["wrk"]["cpu_us_per_request"] for x in runs]),
            "cpu_ratio": _median(
                [
                    b["wrk"]["cpu_us_per_request"] / x["wrk"]["cpu_us_per_request"]
                    for x, b in zip(runs, bares, strict=True)
                ]
            ),
            "requests": sum(x["wrk"]["requests"] for x in runs),
            "failed": sum(x["wrk"]["failed"] for x in runs),
            "throughput_ratio": _median(
                [
                    x["wrk"]["requests_per_s"] / b["wrk"]["requests_per_s"]
                    for x, b in zip(runs, bares, strict=True)
                ]
            ),
            "p99_ratio": _median(
                [
                    x["wrk"]["percentiles_ms"]["99"] / b["wrk"]["percentiles_ms"]["99"]
                    for x, b in zip(runs, bares, strict=True)
                ]
            ),
            "rss_after_kib": _median([x["rss_after_kib"] for x in runs]),
            "rss_idle_kib": _median([x["rss_idle_kib"] for x in runs]),
        }
        if config.proxy_args is not None:
            calls = sum(x["entra_calls"] for x in runs)
            figures["entra_calls"] = calls
            figures["entra_per_1k"] = 1000 * calls / max(figures["requests"], 1)
            figures["rss_idle_ratio"] = figures["rss_idle_kib"] / baseline_kib
        summary[config.name] = figures
    return summary


def evaluate(
    summary: dict[str, dict[str, Any]], burst: dict[str, Any], costs: dict[str, Any]
) -> list[dict[str, Any]]:
    """Each target with its measured value and PASS/FAIL."""
    targets: list[dict[str, Any]] = []

    def add(name: str, measured: str, target: str, passed: bool) -> None:
        targets.append({"target": name, "measured": measured, "goal": target, "pass": passed})

    for config in CONFIGS:
        if config.proxy_args is None:
            continue
        s = summary[config.name]
        n = config.name
        add(
            f"{n}: throughput vs bare",
            f"{s['throughput_ratio']:.2f}x",
            f">= {MIN_THROUGHPUT_RATIO}x",
            s["throughput_ratio"] >= MIN_THROUGHPUT_RATIO,
        )
        add(
            f"{n}: CPU per request, bare over proxy",
            f"{s['cpu_ratio']:.2f}x",
            f">= {MIN_CPU_RATIO}x",
            s["cpu_ratio"] >= MIN_CPU_RATIO,
        )
        add(
            f"{n}: p99 vs bare p99",
            f"{s['p99_ratio']:.2f}x",
            f"<= {MAX_P99_RATIO}x",
            s["p99_ratio"] <= MAX_P99_RATIO,
        )
        add(
            f"{n}: Entra calls per 1,000 requests (steady)",
            f"{s['entra_per_1k']:.4f}",
            f"<= {MAX_ENTRA_PER_1K:g}",
            s["entra_per_1k"] <= MAX_ENTRA_PER_1K,
        )
        add(f"{n}: failed requests", str(s["failed"]), "0", s["failed"] == 0)
        add(
            f"{n}: idle RSS vs import-only baseline",
            f"{s['rss_idle_ratio']:.2f}x",
            f"<= {MAX_RSS_RATIO:.2f}x",
            s["rss_idle_ratio"] <= MAX_RSS_RATIO,
        )
        add(
            f"{n}: idle RSS",
            f"{s['rss_idle_kib'] / 1024:.1f} MiB",
            f"<= {MAX_IDLE_RSS_MIB:g} MiB",
            s["rss_idle_kib"] / 1024 <= MAX_IDLE_RSS_MIB,
        )
    start, idle = costs["start"], costs["idle"]
    add(
        "start -> /readyz 200 vs import aiohttp + bind",
        f"{start['ratio']:.2f}x ({start['proxy_median_s'] * 1000:.0f} vs "
        f"{start['bare_median_s'] * 1000:.0f} ms)",
        f"<= {MAX_START_RATIO}x",
        start["ratio"] <= MAX_START_RATIO,
    )
    add(
        f"idle {idle['seconds']:g}s: wake-ups (context switches, all threads)",
        str(idle["wakeups"]),
        f"< {MAX_IDLE_WAKEUPS}",
        idle["wakeups"] < MAX_IDLE_WAKEUPS,
    )
    add(
        f"idle {idle['seconds']:g}s: CPU ticks",
        str(idle["cpu_ticks"]),
        str(MAX_IDLE_TICKS),
        idle["cpu_ticks"] <= MAX_IDLE_TICKS,
    )
    for name, growth in (
        (f"RSS growth after {costs['hit_growth']['hits']:,} cached hits", costs["hit_growth"]),
        (
            f"RSS growth after {costs['rejected_growth']['resources']:,} rejected resources",
            costs["rejected_growth"],
        ),
    ):
        add(
            name,
            f"{growth['growth_kib'] / 1024:.2f} MiB",
            f"< {MAX_GROWTH_MIB:g} MiB",
            growth["growth_kib"] / 1024 < MAX_GROWTH_MIB,
        )
    add(
        f"stampede ({burst['requests']} cold requests): Entra calls",
        str(burst["entra_calls"]),
        "1",
        burst["entra_calls"] == 1,
    )
    add(
        "stampede: all 200 with the same token",
        f"{burst['statuses']}, {burst['distinct_tokens']} token(s)",
        "all 200, 1 token",
        bool(burst["all_ok_same_token"]),
    )
    return targets


# -- output -------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "wrk": wrk.version(),
        "pinned": bool(pin(SERVER_CORE)) and bool(pin(CLIENT_CORE)),
    }


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def _mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    o = results["options"]
    summary = results["summary"]
    burst = results["stampede"]
    baseline = results["baseline_rss_kib"]
    out = [
        f"{m['date']} | {m['nproc']} CPUs ({m['cpu']}) | Python {m['python']} | {m['wrk']} | "
        f"{o['rounds']} rounds of wrk -t1 -c{o['connections']} -d{o['duration']:g}s, "
        f"server on core {SERVER_CORE}, wrk on core {CLIENT_CORE}"
        + ("" if m["pinned"] else " (NOT pinned: fewer than 2 usable cores)"),
        "",
        "Per round (requests/s, p50 ms, p99 ms):",
        _table(
            ["round", *(c.name for c in CONFIGS)],
            [
                [
                    str(i + 1),
                    *(
                        f"{r[c.name]['wrk']['requests_per_s']:.0f}, "
                        f"{r[c.name]['wrk']['percentiles_ms']['50']:.2f}, "
                        f"{r[c.name]['wrk']['percentiles_ms']['99']:.2f}"
                        for c in CONFIGS
                    ),
                ]
                for i, r in enumerate(results["rounds"])
            ],
        ),
        "",
        "Cached hits, medians over rounds (ratios: per round against that round's bare run):",
        _table(
            [
                "server",
                "req/s",
                "p50 ms",
                "p99 ms",
                "req/s ratio",
                "p99 ratio",
                "CPU us/req",
                "CPU ratio",
                "failed",
                "Entra/1k req",
                "RSS idle MiB",
                "RSS after MiB",
            ],
            [
                [
                    name,
                    f"{s['requests_per_s']:.0f}",
                    f"{s['p50_ms']:.2f}",
                    f"{s['p99_ms']:.2f}",
                    f"{s['throughput_ratio']:.2f}",
                    f"{s['p99_ratio']:.2f}",
                    f"{s['cpu_us_per_request']:.1f}",
                    f"{s['cpu_ratio']:.2f}",
                    f"{s['failed']}/{s['requests']}",
                    f"{s['entra_per_1k']:.4f}" if "entra_per_1k" in s else "-",
                    _mib(s["rss_idle_kib"]) if "rss_idle_kib" in s else "-",
                    _mib(s["rss_after_kib"]),
                ]
                for name, s in summary.items()
            ],
        ),
        "",
        "CPU us/req: the server's user+system CPU time per request over the wrk run; "
        "CPU ratio: bare CPU/req over this server's (the throughput ratio on a quiet core).",
        "",
        f"Import-only baseline RSS: {_mib(baseline)} MiB "
        f"(python -c 'import {', '.join(memory.BASELINE_MODULES)}'); the bare aiohttp server "
        f"idle: {_mib(results['summary']['bare']['rss_idle_kib'])} MiB. Both are floors the "
        "proxy's own state comes on top of.",
        f"Cold stampede: {burst['requests']} concurrent first requests, Entra delay "
        f"{STAMPEDE_DELAY}s -> {burst['entra_calls']} Entra call(s), statuses "
        f"{burst['statuses']}, {burst['distinct_tokens']} distinct token(s), "
        f"{burst['seconds']:.2f}s",
        _costs_text(results["costs"]),
        "",
        "Targets:",
        _table(
            ["target", "measured", "goal", "result"],
            [
                [t["target"], t["measured"], t["goal"], "PASS" if t["pass"] else "FAIL"]
                for t in results["targets"]
            ],
        ),
    ]
    return "\n".join(out)


def _costs_text(costs: dict[str, Any]) -> str:
    start, idle = costs["start"], costs["idle"]
    hits, rejected = costs["hit_growth"], costs["rejected_growth"]
    return "\n".join(
        [
            f"Start (spawn -> ready, {len(start['proxy_s'])} alternating turns): proxy "
            + ", ".join(f"{t * 1000:.0f}" for t in start["proxy_s"])
            + " ms; import aiohttp + bind "
            + ", ".join(f"{t * 1000:.0f}" for t in start["bare_s"])
            + " ms",
            f"Idle {idle['seconds']:g}s after one token: {idle['wakeups']} context switches, "
            f"{idle['cpu_ticks']} CPU ticks ({idle['cpu_ms']:.0f} ms), {idle['threads']} "
            f"threads, RSS {_mib(idle['rss_kib'])} MiB",
            f"Cached hits: {hits['hits']:,} -> RSS {_mib(hits['rss_idle_kib'])} -> "
            f"{_mib(hits['rss_after_kib'])} MiB (after the first wrk run "
            f"{_mib(hits['rss_after_first_run_kib'] or 0)} MiB)",
            f"Rejected resources: {rejected['resources']:,} distinct {rejected['statuses']} -> "
            f"RSS {_mib(rejected['rss_idle_kib'])} -> {_mib(rejected['rss_after_kib'])} MiB "
            f"(after the first tenth {_mib(rejected['rss_after_first_tenth_kib'])} MiB)",
        ]
    )


# -- main ---------------------------------------------------------------------------------


def benchmark(opts: Options, workdir: Path) -> dict[str, Any]:
    def note(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    with FakeEntra(workdir / "entra", prefix=pin(CLIENT_CORE)) as entra:
        note(f"stampede: {opts.stampede} cold requests")
        burst = measure_stampede(entra, workdir, opts.stampede)
        body_size = int(burst["body_bytes"])
        baseline = _median([memory.import_baseline_kib() for _ in range(3)])
        note(f"import-only baseline RSS: {_mib(baseline)} MiB")
        rounds: list[dict[str, Any]] = []
        for i in range(opts.rounds):
            this: dict[str, Any] = {}
            for config in CONFIGS:
                if config.proxy_args is None:
                    this[config.name] = measure_bare(workdir, body_size, opts, config.bare_args)
                else:
                    this[config.name] = measure_proxy(entra, workdir, config.proxy_args, opts)
                w = this[config.name]["wrk"]
                note(
                    f"round {i + 1}/{opts.rounds} {config.name}: {w['requests_per_s']:.0f} req/s, "
                    f"p50 {w['percentiles_ms']['50']:.2f} ms, p99 {w['percentiles_ms']['99']:.2f}"
                    f" ms, failed {w['failed']}"
                )
            rounds.append(this)
        note(f"start: {opts.start_rounds} alternating turns")
        costs: dict[str, Any] = {"start": measure_start(entra, workdir, opts.start_rounds)}
        note(f"idle: {opts.idle:g}s")
        costs["idle"] = measure_idle(entra, workdir, opts.idle)
        note(f"memory: {opts.hits:,} cached hits")
        costs["hit_growth"] = measure_hit_growth(entra, workdir, opts)
        note(f"memory: {opts.rejected:,} rejected resources")
        costs["rejected_growth"] = measure_rejected_growth(entra, workdir, opts.rejected)
    summary = summarise(rounds, baseline)
    return {
        "options": asdict(opts),
        "stampede": burst,
        "baseline_rss_kib": baseline,
        "rounds": rounds,
        "summary": summary,
        "costs": costs,
        "targets": evaluate(summary, burst, costs),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the proxy's cached-hit path.")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--stampede", type=int, default=500, help="cold concurrent requests")
    parser.add_argument("--start-rounds", type=int, default=5, help="start-up turns each")
    parser.add_argument("--idle", type=float, default=60.0, help="idle seconds observed")
    parser.add_argument("--hits", type=int, default=1_000_000, help="cached hits for RSS growth")
    parser.add_argument("--rejected", type=int, default=10_000, help="rejected resources")
    parser.add_argument("--output", type=Path, default=RESULTS, help="raw results (JSON)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0 or args.connections < 1 or args.stampede < 1:
        parser.error("rounds, duration, connections and stampede must be positive")
    opts = Options(
        args.rounds,
        args.duration,
        args.connections,
        args.stampede,
        args.start_rounds,
        args.idle,
        args.hits,
        args.rejected,
    )
    started = time.monotonic()
    info = machine()
    with tempfile.TemporaryDirectory(prefix="imds-bench-") as tmp:
        results = {"machine": info, **benchmark(opts, Path(tmp))}
    results["seconds"] = round(time.monotonic() - started, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))
    print(f"\nRaw results: {args.output} ({results['seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
