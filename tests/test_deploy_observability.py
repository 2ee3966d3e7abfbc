"""The alert rules and the Grafana dashboard in deploy/ against what the proxy really exports.

Every metric named in an alert expression or a dashboard query must appear in a scrape of
the real proxy process after real traffic (a token, a rejection, a throttled exchange), with
the labels and label values the query matches on. The rule file's structure, the
dashboard's structure, the PodMonitor's job and port and, where `promtool` is installed, the
PromQL syntax of every rule and dashboard query and the firing of each alert on synthetic
series are checked too.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from harness.fake_entra import FakeEntra
from harness.proxy_process import ROOT, ProxyProcess, running_proxy
from proxy.config import DEFAULT_METRICS_PORT

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "imds-proxy-dashboard.json"
PODMONITOR = ROOT / "deploy" / "prometheus" / "podmonitor.yaml"
MUTATED_POD = ROOT / "deploy" / "examples" / "pod-mutated-sidecar.yaml"

ARM = "https://management.azure.com/"
META = {"Metadata": "true"}
UNKNOWN_CLIENT_ID = "3d1f4c2b-1111-4a4a-8b8b-9c9c9c9c9c9c"

PROMETHEUS_OWN = {"up"}
"""Series Prometheus writes itself for each target, not exported by the proxy."""
TARGET_LABELS = {"job", "instance", "namespace", "pod"}
"""Labels the scrape configuration attaches to every series (see deploy/README.md)."""
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s"}
PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
}
SEVERITIES = {"critical", "warning", "info"}
REQUIRED_ALERTS = {
    "ImdsProxyDown",
    "ImdsProxyEntraExchangesFailing",
    "ImdsProxyEntraThrottled",
    "ImdsProxyServingStaleTokens",
    "ImdsProxyServiceAccountTokenExpiring",
    "ImdsProxyServiceAccountTokenUnavailable",
    "ImdsProxyCachedTokenExpiringWithoutRefresh",
    "ImdsProxyTokenErrorsHigh",
    "ImdsProxyFederationFailing",
    "ImdsProxySidecarUnused",
}
DURATION = re.compile(r"^(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?$")

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_IDENTIFIER = re.compile(r"(?<![\w.:$])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()")
_SELECTOR = re.compile(r"(?<![\w.:$])([a-zA-Z_:][\w:]*)\s*\{([^{}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_VARIABLE = re.compile(r"\$\{?(\w+)")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.*?)\s*,\s*(\w+)\s*\)\s*$")


# -- what a scrape holds ---------------------------------------------------------------------


@dataclass
class Scrape:
    """Sample names of one scrape with the label sets seen for each, and family types."""

    samples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    families: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Scrape:
        scrape = cls()
        for family in text_string_to_metric_families(text):
            scrape.types[family.name] = family.type
            scrape.families[family.name] = {sample.name for sample in family.samples}
            for sample in family.samples:
                scrape.samples.setdefault(sample.name, []).append(dict(sample.labels))
        return scrape

    def labels(self, name: str) -> set[str]:
        return {label for labels in self.samples.get(name, []) for label in labels}

    def values(self, name: str, label: str) -> set[str]:
        return {labels[label] for labels in self.samples.get(name, []) if label in labels}

    def why_missing(self, name: str) -> str | None:
        """None when `name` selects series in this scrape, else why it selects none."""
        if name in self.samples or name in PROMETHEUS_OWN:
            return None
        if self.types.get(name) == "histogram":
            return f"{name} is a histogram: select {name}_bucket, _sum or _count"
        for suffix in HISTOGRAM_SUFFIXES:
            base = name.removesuffix(suffix)
            if base != name and base in self.types:
                return f"{name}: {base} is a {self.types[base]}, it has no {suffix} series"
        return f"{name} is not exported"


# -- what a PromQL expression refers to ------------------------------------------------------


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (function and keyword names excluded)."""
    bare = _STRING.sub('""', expr)
    bare = _GROUPING.sub(" ", bare)
    bare = _BRACES.sub(" ", bare)
    bare = _BRACKETS.sub(" ", bare)
    return {m for m in _IDENTIFIER.findall(bare) if m not in PROMQL_KEYWORDS}


def problems(expr: str, scrape: Scrape) -> list[str]:
    """Everything in `expr` the scrape cannot satisfy: metric names, label names, values."""
    found: list[str] = []
    names = metric_names(expr)
    for name in sorted(names):
        why = scrape.why_missing(name)
        if why:
            found.append(why)
    for name, matchers in _SELECTOR.findall(expr):
        if name in PROMETHEUS_OWN or scrape.why_missing(name):
            continue
        known = scrape.labels(name)
        for label, op, value in _MATCHER.findall(matchers):
            if label in TARGET_LABELS:
                continue
            if label not in known:
                found.append(f"{name} has no label {label!r}")
            elif op in ("=", "!=") and "$" not in value and value not in scrape.values(name, label):
                found.append(f"{name}{{{label}={value!r}}} never seen in the scrape")
    usable = TARGET_LABELS.union(*(scrape.labels(n) for n in names))
    for clause in _GROUPING.findall(_STRING.sub('""', expr)):
        for label in filter(None, (part.strip() for part in clause.split(","))):
            if label not in usable:
                found.append(f"grouping by {label!r}, a label none of {sorted(names)} has")
    return found


# -- the files -------------------------------------------------------------------------------


def load_rules(path: Path = ALERTS) -> dict[str, Any]:
    rules: dict[str, Any] = yaml.safe_load(path.read_text())
    return rules


def alert_rules(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for group in doc["groups"]:
        yield from group["rules"]


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Top-level panels and those nested in (collapsed) rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def query_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    return (p for p in all_panels(dashboard) if p.get("type") != "row")


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def variable_query(variable: dict[str, Any]) -> str:
    query = variable.get("query")
    text = query.get("query", "") if isinstance(query, dict) else query
    assert isinstance(text, str)
    return text


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every label_values() variable query."""
    found = [
        (f"panel {p['id']} {p['title']!r} target {t['refId']}", t["expr"])
        for p in query_panels(dashboard)
        for t in p.get("targets", [])
    ]
    for name, variable in variables(dashboard).items():
        match = (
            _LABEL_VALUES.match(variable_query(variable)) if variable["type"] == "query" else None
        )
        if match:
            found.append((f"variable {name}", match.group(1)))
    return found


def as_promql(expr: str) -> str:
    """A dashboard query as Prometheus would receive it, with the variables filled in."""
    expr = re.sub(r"\$\{?__\w+\}?", "5m", expr)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


# -- a real scrape ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scrape(fake_entra_process: FakeEntra, tmp_path_factory: pytest.TempPathFactory) -> Scrape:
    """The proxy's metrics after a token, a rejection and a throttled exchange: one scrape
    of one process, read by every test here (none changes it)."""
    fake_entra = fake_entra_process
    fake_entra.reset()
    with running_proxy(fake_entra.env(), tmp_path_factory.mktemp("scrape")) as proxy:
        return _scrape(proxy, fake_entra)


def _scrape(proxy: ProxyProcess, fake_entra: FakeEntra) -> Scrape:
    assert requests.get(proxy.url(ARM), headers=META, timeout=10).status_code == 200
    rejected = requests.get(proxy.url(ARM, client_id=UNKNOWN_CLIENT_ID), headers=META, timeout=10)
    assert rejected.status_code == 400
    fake_entra.behave(mode="throttle", retry_after=30)
    throttled = requests.get(proxy.url("https://vault.azure.net"), headers=META, timeout=10)
    assert throttled.status_code == 429
    return Scrape.parse(proxy.metrics())


def test_the_scrape_holds_the_labelled_series_the_checks_rely_on(scrape: Scrape) -> None:
    outcomes = scrape.values("imds_proxy_entra_exchanges_total", "outcome")
    assert {"success", "rejected", "throttled"} <= outcomes
    assert {"200", "400", "429"} <= scrape.values("imds_proxy_requests_total", "code")
    assert "final" in scrape.values("imds_proxy_federation_failures_total", "phase")
    assert "imds_proxy_token_expiry_seconds" in scrape.samples
    assert "imds_proxy_service_account_token_expiry_seconds" in scrape.samples


def test_every_alert_expression_matches_the_scrape(scrape: Scrape) -> None:
    found = {rule["alert"]: problems(rule["expr"], scrape) for rule in alert_rules(load_rules())}
    assert {alert: p for alert, p in found.items() if p} == {}


def test_every_dashboard_query_matches_the_scrape(scrape: Scrape) -> None:
    found = {where: problems(expr, scrape) for where, expr in dashboard_exprs(load_dashboard())}
    assert {where: p for where, p in found.items() if p} == {}


def test_the_dashboard_shows_every_metric_the_proxy_exports(scrape: Scrape) -> None:
    shown = set().union(*(metric_names(e) for _, e in dashboard_exprs(load_dashboard())))
    unshown = [
        family
        for family, names in scrape.families.items()
        if family.startswith("imds_proxy_") and not names & shown
    ]
    assert unshown == []


def test_the_name_check_reports_what_the_scrape_lacks(scrape: Scrape) -> None:
    doc = {
        "groups": [
            {
                "name": "broken",
                "rules": [
                    {"alert": "NoSuchMetric", "expr": "rate(imds_proxy_no_such_metric[5m]) > 0"},
                    {
                        "alert": "BareHistogram",
                        "expr": "histogram_quantile(0.99, "
                        "rate(imds_proxy_request_duration_seconds[5m]))",
                    },
                    {"alert": "GaugeBucket", "expr": "imds_proxy_cache_entries_bucket > 0"},
                    {
                        "alert": "MisspeltOutcome",
                        "expr": 'imds_proxy_entra_exchanges_total{outcome="throttle"} > 0',
                    },
                    {
                        "alert": "UnknownLabel",
                        "expr": 'imds_proxy_cache_hits_total{route="token"} > 0',
                    },
                    {
                        "alert": "UnknownGrouping",
                        "expr": "sum by (namespace, scope) (imds_proxy_cache_entries) > 0",
                    },
                    {
                        "alert": "Fine",
                        "expr": "sum by (le) (rate("
                        'imds_proxy_request_duration_seconds_bucket{route="token"}[5m])) '
                        "and on () up == 1",
                    },
                ],
            }
        ]
    }
    found = {rule["alert"]: problems(rule["expr"], scrape) for rule in alert_rules(doc)}
    assert found == {
        "NoSuchMetric": ["imds_proxy_no_such_metric is not exported"],
        "BareHistogram": [
            "imds_proxy_request_duration_seconds is a histogram: select "
            "imds_proxy_request_duration_seconds_bucket, _sum or _count"
        ],
        "GaugeBucket": [
            "imds_proxy_cache_entries_bucket: imds_proxy_cache_entries is a gauge, "
            "it has no _bucket series"
        ],
        "MisspeltOutcome": [
            "imds_proxy_entra_exchanges_total{outcome='throttle'} never seen in the scrape"
        ],
        "UnknownLabel": ["imds_proxy_cache_hits_total has no label 'route'"],
        "UnknownGrouping": [
            "grouping by 'scope', a label none of ['imds_proxy_cache_entries'] has"
        ],
        "Fine": [],
    }


def test_metric_names_skip_functions_keywords_labels_and_variables() -> None:
    expr = (
        'sum by (le, code) (rate(a_total{route="token", pod=~"$pod"}[$__rate_interval] '
        "offset 5m)) / on (pod) group_left (version) b_info * 1e3 and c unless bool d"
    )
    assert metric_names(expr) == {"a_total", "b_info", "c", "d"}


# -- the rule file ---------------------------------------------------------------------------


def test_every_alert_rule_is_complete() -> None:
    rules = list(alert_rules(load_rules()))
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    assert set(names) >= REQUIRED_ALERTS
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
        assert isinstance(rule["expr"], str) and rule["expr"].strip(), rule["alert"]
        duration = str(rule["for"])
        assert duration and DURATION.match(duration), f"{rule['alert']}: for {duration!r}"
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        for key in ("summary", "description", "runbook"):
            text = rule["annotations"].get(key)
            assert isinstance(text, str) and len(text) > 20, f"{rule['alert']}: {key}"


def test_each_alert_aggregates_or_selects_the_sidecar_job() -> None:
    for rule in alert_rules(load_rules()):
        expr = rule["expr"]
        if "up{" in expr:
            assert 'job=~".*imds-proxy.*"' in expr
        else:
            assert re.search(r"\b(by|on) \((namespace, pod|namespace)[,)]", expr), rule["alert"]


def test_the_podmonitor_scrapes_the_sidecar_under_the_job_the_rules_select() -> None:
    monitor = yaml.safe_load(PODMONITOR.read_text())
    job = f"{monitor['metadata']['namespace']}/{monitor['metadata']['name']}"
    assert re.fullmatch(".*imds-proxy.*", job)
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    (keep,) = endpoint["relabelings"]
    pod = yaml.safe_load(MUTATED_POD.read_text())
    (sidecar,) = [c for c in pod["spec"]["containers"] if re.fullmatch(keep["regex"], c["name"])]
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert ports[endpoint["port"]] == DEFAULT_METRICS_PORT == 14637  # the default
    assert endpoint["path"] == "/metrics"


# -- the dashboard ---------------------------------------------------------------------------


def test_dashboard_structure() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), ids
    declared = variables(dashboard)
    assert declared["datasource"]["type"] == "datasource"
    assert declared["datasource"]["query"] == "prometheus"
    for name in ("namespace", "pod"):
        assert declared[name]["type"] == "query"
        query = variable_query(declared[name])
        assert query.startswith("label_values(imds_proxy_build_info"), query
        assert query.endswith(f", {name})"), query
        assert declared[name]["datasource"]["uid"] == "${datasource}"
    for panel in query_panels(dashboard):
        where = f"panel {panel['id']} {panel.get('title')!r}"
        assert panel["datasource"]["uid"] == "${datasource}", where
        targets = panel.get("targets", [])
        assert targets and all(t.get("expr", "").strip() for t in targets), where
        assert len({t["refId"] for t in targets}) == len(targets), where
        for target in targets:
            used = set(_VARIABLE.findall(target["expr"]))
            assert used <= set(declared) | GRAFANA_BUILTINS, f"{where}: {used}"
            assert target["datasource"]["uid"] == "${datasource}", where


def test_dashboard_has_the_panels_sres_need() -> None:
    exprs = [e for _, e in dashboard_exprs(load_dashboard())]
    request_latency = 'rate(imds_proxy_request_duration_seconds_bucket{route="token"'
    for needed in (
        ("histogram_quantile(0.5, sum by (le) (", request_latency),
        ("histogram_quantile(0.99, sum by (le) (", request_latency),
        ("histogram_quantile(0.99, sum by (le) (", "imds_proxy_entra_exchange_duration_seconds"),
        ("sum by (code) (", 'imds_proxy_requests_total{route="token"'),
        ("sum by (outcome, aadsts) (", "imds_proxy_entra_exchanges_total"),
        ("imds_proxy_cache_hits_total", "imds_proxy_cache_misses_total"),
        ("min(imds_proxy_service_account_token_expiry_seconds",),
        ("min(imds_proxy_token_expiry_seconds",),
        ("imds_proxy_cache_stale_served_total",),
        ("imds_proxy_cache_entries",),
        ("imds_proxy_cache_evictions_total",),
        ("sum by (cause, phase) (", "imds_proxy_federation_failures_total"),
        ("process_resident_memory_bytes",),
        ("count by (version, python, msal) (imds_proxy_build_info",),
        ("sum by (client, supports_workload_identity) (", "imds_proxy_token_requests_by_client"),
        ("imds_proxy_last_token_request_timestamp_seconds",),
    ):
        assert any(all(part in e for part in needed) for e in exprs), needed


# -- promtool: PromQL syntax and the alerts firing on synthetic series -----------------------

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not on PATH (Debian package 'prometheus'): PromQL syntax and rule "
    "unit tests skipped; the metric-name checks above still ran",
)

SERIES = 'job="monitoring/imds-proxy", namespace="apps", pod="web-1"'
LABELS = {"namespace": "apps", "pod": "web-1"}


def _series(name: str, labels: str = "") -> str:
    return f"{name}{{{SERIES}{', ' + labels if labels else ''}}}"


ALERT_CASES: list[tuple[str, list[tuple[str, str]], str, list[dict[str, str]]]] = [
    (
        "ImdsProxyDown",
        [(_series("up", 'instance="10.0.0.1:14637"'), "0x15")],
        "10m",
        [{**LABELS, "job": "monitoring/imds-proxy", "instance": "10.0.0.1:14637"}],
    ),
    (
        "ImdsProxyEntraExchangesFailing",
        [
            (_series("imds_proxy_entra_exchanges_total", 'outcome="success", aadsts=""'), "3x30"),
            (
                _series("imds_proxy_entra_exchanges_total", 'outcome="rejected", aadsts="700016"'),
                "0+2x30",
            ),
        ],
        "20m",
        [{**LABELS, "outcome": "rejected", "aadsts": "700016"}],
    ),
    (
        "ImdsProxyEntraThrottled",
        [(_series("imds_proxy_entra_exchanges_total", 'outcome="throttled", aadsts=""'), "0+1x30")],
        "20m",
        [{"namespace": "apps"}],
    ),
    (
        "ImdsProxyServingStaleTokens",
        [(_series("imds_proxy_cache_stale_served_total"), "0+5x30")],
        "20m",
        [{"namespace": "apps"}],
    ),
    (
        "ImdsProxyServiceAccountTokenExpiring",
        [(_series("imds_proxy_service_account_token_expiry_seconds"), "900-60x15")],
        "14m",
        [LABELS],
    ),
    (
        "ImdsProxyServiceAccountTokenUnavailable",
        [(_series("imds_proxy_build_info", 'version="0.1.0", python="3.11", msal="1"'), "1x15")],
        "10m",
        [LABELS],
    ),
    (
        "ImdsProxyCachedTokenExpiringWithoutRefresh",
        [
            (_series("imds_proxy_token_expiry_seconds"), "1200-60x30"),
            (_series("imds_proxy_cache_stale_served_total"), "0+5x30"),
        ],
        "20m",
        [LABELS],
    ),
    (
        "ImdsProxyTokenErrorsHigh",
        [
            (_series("imds_proxy_requests_total", 'route="token", code="200"'), "0+60x30"),
            (_series("imds_proxy_requests_total", 'route="token", code="503"'), "0+30x30"),
        ],
        "20m",
        [LABELS],
    ),
]

ALERT_CASES.append(
    (
        "ImdsProxyFederationFailing",
        [
            (
                _series(
                    "imds_proxy_federation_failures_total",
                    'cause="no_matching_credential", phase="final"',
                ),
                "0x5 0+1x25",
            )
        ],
        "20m",
        [{**LABELS, "cause": "no_matching_credential"}],
    )
)

QUIET_CASES: list[tuple[str, list[tuple[str, str]], str]] = [
    (  # a credential propagating: answered 503 inside the window, no alert
        "ImdsProxyFederationFailing",
        [
            (
                _series(
                    "imds_proxy_federation_failures_total",
                    'cause="no_matching_credential", phase="propagating"',
                ),
                "0+1x30",
            )
        ],
        "20m",
    ),
    (  # failures while other exchanges succeed: not "failing"
        "ImdsProxyEntraExchangesFailing",
        [
            (_series("imds_proxy_entra_exchanges_total", 'outcome="success", aadsts=""'), "0+1x30"),
            (
                _series("imds_proxy_entra_exchanges_total", 'outcome="rejected", aadsts="500011"'),
                "0+1x30",
            ),
        ],
        "20m",
    ),
    (  # an idle token running out while exchanges are fine is no alert
        "ImdsProxyCachedTokenExpiringWithoutRefresh",
        [
            (_series("imds_proxy_token_expiry_seconds"), "1200-60x30"),
            (_series("imds_proxy_cache_stale_served_total"), "0x30"),
            (_series("imds_proxy_entra_exchanges_total", 'outcome="success", aadsts=""'), "0+1x30"),
        ],
        "20m",
    ),
    (  # a high ratio, but one 5xx every 5 minutes among few requests
        "ImdsProxyTokenErrorsHigh",
        [
            (_series("imds_proxy_requests_total", 'route="token", code="200"'), "0+1x30"),
            (
                _series("imds_proxy_requests_total", 'route="token", code="503"'),
                "0x4 1x4 2x4 3x4 4x4 5x4",
            ),
        ],
        "20m",
    ),
    (  # a healthy, rotated service-account token
        "ImdsProxyServiceAccountTokenUnavailable",
        [
            (_series("imds_proxy_build_info", 'version="0.1.0", python="3.11", msal="1"'), "1x15"),
            (_series("imds_proxy_service_account_token_expiry_seconds"), "3000x15"),
        ],
        "10m",
    ),
]


SLOW_ALERT_CASES = [
    (  # the last token request 7 days and 2 hours before the evaluation
        "ImdsProxySidecarUnused",
        [
            (_series("imds_proxy_last_token_request_timestamp_seconds"), "0x200"),
            (_series("process_start_time_seconds"), "0x200"),
        ],
        "170h",
        [LABELS],
    ),
    (  # never a token request since a start 7 days and 2 hours ago
        "ImdsProxySidecarUnused",
        [(_series("process_start_time_seconds"), "0x200")],
        "170h",
        [LABELS],
    ),
]
"""Alerts about days rather than minutes: their unit tests step by the hour."""
SLOW_QUIET_CASES: list[tuple[str, list[tuple[str, str]], str]] = [
    (  # a request every hour, from a sidecar started long ago
        "ImdsProxySidecarUnused",
        [
            (_series("imds_proxy_last_token_request_timestamp_seconds"), "0+3600x200"),
            (_series("process_start_time_seconds"), "0x200"),
        ],
        "170h",
    ),
    (  # a sidecar started 6 days ago that has not been asked yet
        "ImdsProxySidecarUnused",
        [(_series("process_start_time_seconds"), "86400x200")],
        "170h",
    ),
]


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


@needs_promtool
def test_promtool_accepts_the_rule_file() -> None:
    result = promtool("check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_accepts_every_dashboard_query(tmp_path: Path) -> None:
    rules = [
        {"record": f"dashboard:query_{i}", "expr": as_promql(expr)}
        for i, (_, expr) in enumerate(dashboard_exprs(load_dashboard()))
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    broken = {"alert": "Broken", "expr": "sum by (pod (up", "for": "5m"}
    path.write_text(yaml.safe_dump({"groups": [{"name": "broken", "rules": [broken]}]}))
    assert promtool("check", "rules", path).returncode != 0


@needs_promtool
def test_each_alert_fires_on_its_scenario_and_stays_quiet_otherwise(tmp_path: Path) -> None:
    doc = load_rules()
    rule_labels = {rule["alert"]: rule["labels"] for rule in alert_rules(doc)}
    for rule in alert_rules(doc):  # annotations are compared verbatim by promtool: drop them
        rule.pop("annotations", None)
    (tmp_path / "alerts.yaml").write_text(yaml.safe_dump(doc))
    tests = _unit_tests(ALERT_CASES, QUIET_CASES, rule_labels, "1m")
    slow = _unit_tests(SLOW_ALERT_CASES, SLOW_QUIET_CASES, rule_labels, "1h")
    assert {case[0] for case in ALERT_CASES + SLOW_ALERT_CASES} == {
        r["alert"] for r in alert_rules(doc)
    }
    for name, unit_tests, step in (("alerts_test", tests, "1m"), ("slow_test", slow, "1h")):
        unit = tmp_path / f"{name}.yaml"
        unit.write_text(
            yaml.safe_dump(
                {"rule_files": ["alerts.yaml"], "evaluation_interval": step, "tests": unit_tests}
            )
        )
        result = promtool("test", "rules", unit)
        assert result.returncode == 0, result.stdout + result.stderr


def _unit_tests(
    cases: list[tuple[str, list[tuple[str, str]], str, list[dict[str, str]]]],
    quiet: list[tuple[str, list[tuple[str, str]], str]],
    rule_labels: dict[str, dict[str, str]],
    step: str,
) -> list[dict[str, object]]:
    tests: list[dict[str, object]] = [
        {
            "interval": step,
            "input_series": [{"series": s, "values": v} for s, v in series],
            "alert_rule_test": [
                {
                    "eval_time": at,
                    "alertname": alert,
                    "exp_alerts": [{"exp_labels": {**rule_labels[alert], **e}} for e in expected],
                }
            ],
        }
        for alert, series, at, expected in cases
    ]
    tests += [
        {
            "interval": step,
            "input_series": [{"series": s, "values": v} for s, v in series],
            "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": []}],
        }
        for alert, series, at in quiet
    ]
    return tests
