"""Prometheus metrics end to end: SPEC §5 names, buckets, worker aggregation, the dashboard.

Every check scrapes a real `edge serve` (one worker, and two workers in multiprocess mode)
in front of the bundled mock upstream and a provider that refuses connections, so that
failover, provider errors, an open circuit, cost and a cache hit all happen for real.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from _redis import free_port
from _servers import EdgeProcess, MockUpstream, wait_until
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from edge import fastpath
from edge._version import __version__
from edge.metrics import MAX_KEY_LABELS, Metrics

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "edge.json"
PROVISIONING = ROOT / "docker" / "grafana" / "provisioning" / "dashboards" / "edge.yml"

# SPEC §5, with each metric's Prometheus type.
SPEC_METRICS = {
    "llm_edge_requests": "counter",
    "llm_edge_request_duration_seconds": "histogram",
    "llm_edge_request_errors": "counter",
    "llm_edge_cache_hits": "counter",
    "llm_edge_cache_misses": "counter",
    "llm_edge_cache_latency_seconds": "histogram",
    "llm_edge_provider_latency_seconds": "histogram",
    "llm_edge_provider_errors": "counter",
    "llm_edge_cost_usd": "counter",
    "llm_edge_cost_saved_usd": "counter",
    "llm_edge_tokens_used": "counter",
    "llm_edge_tokens_prompt": "counter",
    "llm_edge_tokens_completion": "counter",
    "llm_edge_inflight_requests": "gauge",
    "llm_edge_failovers": "counter",
    "llm_edge_hedges": "counter",
    "llm_edge_circuit_open": "gauge",
}
SERIES_SUFFIXES = {"counter": ("_total",), "gauge": ("",),
                   "histogram": ("_bucket", "_sum", "_count")}

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "count me"}]}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Scrape:
    """One /metrics body, parsed: sample values by (name, labels), and family types."""

    def __init__(self, text: str) -> None:
        self.samples: Samples = {}
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    @property
    def names(self) -> set[str]:
        return {name for name, _ in self.samples}

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def total(self, name: str, **labels: str) -> float:
        """Sum over every series of `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= ls)


def scrape(url: str) -> Scrape:
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return Scrape(response.text)


def edge_config(mock_url: str) -> str:
    # "down" comes first (strategy "model" keeps config order) and refuses connections:
    # every miss fails over to "mock", and one failure opens down's circuit.
    return f"""
[routing]
strategy = "model"
max_attempts = 3
breaker_failures = 1
breaker_cooldown_s = 600

[[providers]]
name = "down"
kind = "openai"
base_url = "http://127.0.0.1:{free_port()}/v1"
api_key = "env:PROVIDER_KEY"
models = ["gpt-*"]
timeout_s = 5

[[providers]]
name = "mock"
kind = "openai"
base_url = "{mock_url}/v1"
api_key = "env:PROVIDER_KEY"
models = ["gpt-*"]
timeout_s = 5
"""


ENV = {"PROVIDER_KEY": "sk-test-metrics"}


def stopped(edge: EdgeProcess) -> None:
    """SIGTERM, and the drain must end with exit status 0."""
    code = edge.stop()
    assert code == 0, f"edge exited {code}:\n{edge.log_path.read_text(errors='replace')}"


class Scenario:
    def __init__(self, workers: int, proxy: Scrape, listener: Scrape) -> None:
        self.workers = workers
        self.proxy = proxy
        self.listener = listener


@pytest.fixture(scope="module", params=[1, 2], ids=["1-worker", "2-workers"])
def scenario(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
             mock_upstream: MockUpstream) -> Iterator[Scenario]:
    """A miss that fails over, the same request again (an L1 hit), and a malformed request.

    They share one keep-alive connection, so with two workers one worker serves them all
    while /metrics, on fresh connections, may be answered by either: it must show the sum.
    """
    workers: int = request.param
    tmp = tmp_path_factory.mktemp(f"metrics-{workers}")
    edge = EdgeProcess(tmp, config=edge_config(mock_upstream.url), env=ENV,
                       args=("--workers", str(workers)))
    try:
        with httpx.Client(base_url=edge.url, timeout=20) as client:
            first = client.post("/v1/chat/completions", json=CHAT)
            assert first.status_code == 200, first.text
            assert first.headers["x-edge-provider"] == "mock"
            assert first.headers["x-edge-cache"] == "miss"
            second = client.post("/v1/chat/completions", json=CHAT)
            assert second.headers["x-edge-cache"] == "hit-l1"
            bad = client.post("/v1/chat/completions", content=b"{not json",
                              headers={"content-type": "application/json"})
            assert bad.status_code == 400
        yield Scenario(workers, scrape(edge.url), scrape(edge.metrics_url))
    finally:
        stopped(edge)


@pytest.mark.parametrize("where", ["proxy", "listener"])
def test_every_spec_metric_is_exported(scenario: Scenario, where: str) -> None:
    scraped: Scrape = getattr(scenario, where)
    missing = [name + suffix for name, kind in SPEC_METRICS.items()
               for suffix in SERIES_SUFFIXES[kind] if name + suffix not in scraped.names]
    assert not missing, f"not exported on the {where}: {missing}"
    wrong = {name: scraped.types.get(name) for name, kind in SPEC_METRICS.items()
             if scraped.types.get(name) != kind}
    assert not wrong, f"wrong metric types: {wrong}"


def test_values_add_up(scenario: Scenario) -> None:
    """Exact counts for the scenario, whichever worker answered the scrape."""
    for s in (scenario.proxy, scenario.listener):
        assert s.value("llm_edge_requests_total", endpoint="chat", status="2xx") == 2
        assert s.value("llm_edge_requests_total", endpoint="chat", status="4xx") == 1
        assert s.value("llm_edge_request_errors_total", type="invalid_request_error") == 1
        assert s.value("llm_edge_request_duration_seconds_count", endpoint="chat") == 2
        assert s.value("llm_edge_cache_hits_total", tier="l1") == 1
        assert s.value("llm_edge_cache_misses_total") == 1
        assert s.total("llm_edge_provider_errors_total", provider="down") == 1
        assert s.total("llm_edge_provider_errors_total", provider="mock") == 0
        assert s.total("llm_edge_failovers_total") == 1
        assert s.value("llm_edge_circuit_open", provider="down") == 1
        assert s.value("llm_edge_circuit_open", provider="mock") == 0
        assert s.value("llm_edge_hedges_total", provider="mock") == 0  # primed, not absent
        assert s.value("llm_edge_inflight_requests") == 0
        assert s.value("llm_edge_provider_latency_seconds_count",
                       provider="mock", model="gpt-4o") == 1
        cost = s.value("llm_edge_cost_usd_total", provider="mock", model="gpt-4o")
        assert cost > 0
        # The hit saved exactly what the miss cost.
        assert s.value("llm_edge_cost_saved_usd_total", provider="mock",
                       model="gpt-4o") == pytest.approx(cost)
        prompt = s.value("llm_edge_tokens_prompt_total", provider="mock", model="gpt-4o")
        completion = s.value("llm_edge_tokens_completion_total", provider="mock", model="gpt-4o")
        assert prompt > 0
        assert completion > 0
        assert s.value("llm_edge_tokens_used_total", provider="mock",
                       model="gpt-4o") == prompt + completion


@pytest.mark.parametrize("histogram", ["llm_edge_request_duration_seconds",
                                       "llm_edge_provider_latency_seconds"])
def test_latency_buckets_span_5ms_to_120s(scenario: Scenario, histogram: str) -> None:
    bounds = sorted({float(dict(labels)["le"]) for name, labels in scenario.proxy.samples
                     if name == f"{histogram}_bucket"})
    finite = [b for b in bounds if not math.isinf(b)]
    assert finite[0] == 0.005
    assert finite[-1] == 120.0
    assert math.isinf(bounds[-1])


# -- the Grafana dashboard -------------------------------------------------------------


def dashboard_panels() -> list[dict]:
    panels = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # panels inside collapsed rows
    return panels


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]


def dashboard_metric_names() -> set[str]:
    return {m for expr in dashboard_exprs() for m in re.findall(r"\bllm_edge_\w+", expr)}


def test_dashboard_queries_only_exported_metrics(scenario: Scenario) -> None:
    names = dashboard_metric_names()
    assert len(names) >= 15  # the regex found the queries, not nothing
    missing = sorted(names - scenario.listener.names)
    assert not missing, f"the dashboard queries series edge does not export: {missing}"


def test_dashboard_panels_and_datasource() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] == "edge"
    panels = [p for p in dashboard_panels() if p["type"] != "row"]
    for panel in panels:
        assert panel["datasource"]["uid"] == "prometheus", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "prometheus", panel["title"]
    exprs = dashboard_exprs()
    for quantile in ("0.5", "0.95", "0.99"):
        assert any(e.startswith(f"histogram_quantile({quantile},")
                   and "llm_edge_request_duration_seconds_bucket" in e for e in exprs)
    needed = {  # what the panels must show, by the series they query
        "request rate": "rate(llm_edge_requests_total",
        "hit ratio per tier": "sum by (tier) (rate(llm_edge_cache_hits_total",
        "cost": "llm_edge_cost_usd_total",
        "cost saved": "llm_edge_cost_saved_usd_total",
        "provider errors": "llm_edge_provider_errors_total",
        "circuit state": "llm_edge_circuit_open",
        "in-flight": "llm_edge_inflight_requests",
    }
    absent = [what for what, fragment in needed.items() if not any(fragment in e for e in exprs)]
    assert not absent, f"dashboard lacks panels for: {absent}"
    # Panel ids must be unique or Grafana silently drops panels.
    ids = [p["id"] for p in dashboard_panels()]
    assert len(ids) == len(set(ids))


def test_dashboard_provisioning_points_at_the_mounted_directory() -> None:
    doc = yaml.safe_load(PROVISIONING.read_text())
    assert doc["apiVersion"] == 1
    [provider] = doc["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


# -- configuration and process shape ----------------------------------------------------


def test_build_info_names_the_version_and_the_hot_path(scenario: Scenario) -> None:
    for s in (scenario.proxy, scenario.listener):
        assert s.value("llm_edge_build_info", version=__version__, fastpath=fastpath.KIND) == 1
        assert s.total("llm_edge_build_info") == 1


# Loaded by the edge process at start (sitecustomize on PYTHONPATH): the compiled module
# cannot be imported, as when edge was installed without a C compiler.
BLOCK_COMPILED = """
import sys


class NoCompiledFastPath:
    def find_spec(self, name, path=None, target=None):
        if name == "edge._fastpath":
            raise ImportError("edge._fastpath blocked by the test")
        return None


sys.meta_path.insert(0, NoCompiledFastPath())
"""


@pytest.mark.parametrize("chosen", [False, True], ids=["build-missing", "EDGE_NO_EXTENSIONS"])
def test_the_python_fast_path_is_exported_and_warned_unless_chosen(
        tmp_path: Path, mock_upstream: MockUpstream, chosen: bool) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_COMPILED)
    env = {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(site),
                                                              os.environ.get("PYTHONPATH")]))}
    if chosen:
        env["EDGE_NO_EXTENSIONS"] = "1"
    edge = EdgeProcess(tmp_path, config=edge_config(mock_upstream.url), env=env)
    try:
        s = scrape(edge.metrics_url)
        assert s.value("llm_edge_build_info", version=__version__, fastpath="python") == 1
        assert s.total("llm_edge_build_info") == 1
        wait_until(lambda: "edge listening" in edge.output(), what="the start-up log")
        warnings = [json.loads(line) for line in edge.output().splitlines()
                    if "compiled fast path" in line]
        if chosen:
            assert warnings == []
        else:
            assert len(warnings) == 1
            assert warnings[0]["level"] == "warning"
            assert "blocked by the test" in warnings[0]["msg"]
    finally:
        stopped(edge)


def test_multiprocess_metrics_refuse_to_run_in_memory(tmp_path: Path) -> None:
    # This test process imported prometheus_client without PROMETHEUS_MULTIPROC_DIR, so
    # values live in memory: claiming a shared directory must fail, not scrape nothing.
    with pytest.raises(RuntimeError, match="PROMETHEUS_MULTIPROC_DIR"):
        Metrics(multiprocess_dir=str(tmp_path))


def test_prime_exports_zero_series_per_provider() -> None:
    metrics = Metrics()
    metrics.prime(["a", "b"])
    s = Scrape(metrics.render().decode())
    for provider in ("a", "b"):
        assert s.value("llm_edge_circuit_open", provider=provider) == 0
        assert s.value("llm_edge_failovers_total", provider=provider) == 0
        assert s.value("llm_edge_hedges_total", provider=provider) == 0


def test_key_spend_labels_are_capped_and_the_rest_summed_into_other() -> None:
    metrics = Metrics()
    spend = {f"key-{i}": 1.0 for i in range(MAX_KEY_LABELS + 5)}
    metrics.key_spend_window(spend)
    values = {s.labels["key"]: s.value
              for family in text_string_to_metric_families(metrics.render().decode())
              if family.name == "llm_edge_key_spend_usd" for s in family.samples}
    assert len(values) == MAX_KEY_LABELS + 1
    assert (values["key-0"], values["other"]) == (1.0, 5.0)
    assert metrics.key_label("key-0") == "key-0"
    assert metrics.key_label("new") == "other"


def test_enable_metrics_false_turns_off_route_and_listener(
        tmp_path: Path, mock_upstream: MockUpstream) -> None:
    edge = EdgeProcess(tmp_path, config=edge_config(mock_upstream.url),
                       env={**ENV, "ENABLE_METRICS": "false"})
    try:
        response = httpx.post(f"{edge.url}/v1/chat/completions", json=CHAT, timeout=20)
        assert response.status_code == 200
        assert httpx.get(f"{edge.url}/metrics", timeout=10).status_code == 404
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{edge.metrics_url}/metrics", timeout=10)
    finally:
        stopped(edge)


def per_worker_requests(metrics_dir: Path) -> dict[str, float]:
    """Each worker's own llm_edge_requests_total, read from its file in the shared directory."""
    counts = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = path.stem.removeprefix("counter_")
        counts[pid] = sum(sample.value
                          for family in MultiProcessCollector.merge([str(path)], accumulate=False)
                          for sample in family.samples
                          if sample.name == "llm_edge_requests_total")
    return counts


@pytest.mark.slow
def test_two_workers_sum_counters_and_remove_their_directory(
        tmp_path: Path, mock_upstream: MockUpstream) -> None:
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    edge = EdgeProcess(tmp_path, config=edge_config(mock_upstream.url),
                       env={**ENV, "TMPDIR": str(tmpdir)}, args=("--workers", "2"))
    try:
        dirs = list(tmpdir.glob("edge-metrics-*"))
        assert len(dirs) == 1, dirs
        metrics_dir = dirs[0]
        sent = 0
        counts: dict[str, float] = {}
        # A fresh connection per request (no keep-alive) until both workers have accepted
        # some: the kernel decides which worker accepts.
        fresh = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(base_url=edge.url, limits=fresh, timeout=20) as client:
            while sent < 300:
                for _ in range(10):
                    response = client.post("/v1/chat/completions", json=CHAT)
                    assert response.status_code == 200, response.text
                    sent += 1
                counts = per_worker_requests(metrics_dir)
                if len(counts) == 2 and all(counts.values()):
                    break
        assert len(counts) == 2, counts
        assert all(counts.values()), f"one worker took all: {counts}"
        assert sum(counts.values()) == sent
        for url in (edge.url, edge.metrics_url):
            s = scrape(url)
            assert s.value("llm_edge_requests_total", endpoint="chat", status="2xx") == sent
            assert s.value("llm_edge_request_duration_seconds_count", endpoint="chat") == sent
            assert s.value("llm_edge_inflight_requests") == 0
    finally:
        stopped(edge)
    assert not metrics_dir.exists()
