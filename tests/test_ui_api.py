"""The dashboard's server side through a real `edge serve`: /ui's files and security
headers, the setup page without an admin key, and the numbers of /admin/stats and
/admin/providers checked against the requests sent (openai SDK) and /admin/usage."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from _servers import EdgeProcess, MockUpstream, wait_until

ADMIN = "sk-admin-dashboard"
PROVIDER_KEY = "sk-provider-dashboard-secret"
CONFIG = """
[[providers]]
name = "up"
kind = "openai"
base_url = "{mock_url}/v1"
api_key = "env:PROVIDER_KEY"
models = ["*"]

[models."gpt-4o-mini"]
input_per_mtok = 1.5
output_per_mtok = 6.0

[auth]
admin_key = "env:EDGE_ADMIN_KEY"

[store]
url = "memory://"
"""
Factory = Callable[..., EdgeProcess]
UI_HEADERS = {
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
}


def edge_args(mock: MockUpstream, *, admin_key: bool = True) -> dict[str, Any]:
    """`EdgeProcess` arguments: the mock as the one provider, with or without an admin key."""
    config = CONFIG.format(mock_url=mock.url)
    env = {"PROVIDER_KEY": PROVIDER_KEY}
    if admin_key:
        env["EDGE_ADMIN_KEY"] = ADMIN
    else:
        config = config.replace('admin_key = "env:EDGE_ADMIN_KEY"', "")
    return {"config": config, "env": env}


def start_edge(edge_factory: Callable[..., EdgeProcess], mock: MockUpstream, *,
               admin_key: bool = True) -> EdgeProcess:
    return edge_factory(**edge_args(mock, admin_key=admin_key))


def admin_get(edge: EdgeProcess, path: str, key: str | None = ADMIN) -> httpx.Response:
    headers = {} if key is None else {"authorization": f"Bearer {key}"}
    return httpx.get(f"{edge.url}{path}", headers=headers, timeout=10)


def chat(client: openai.OpenAI, text: str) -> Any:
    return client.chat.completions.create(model="gpt-4o-mini",
                                          messages=[{"role": "user", "content": text}])


def check_ui_headers(response: httpx.Response) -> None:
    for name, value in UI_HEADERS.items():
        assert response.headers[name] == value, name
    csp = response.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe-" not in csp


def test_ui_files_carry_the_security_headers(
        edge_factory: Factory, mock_upstream: MockUpstream) -> None:
    edge = start_edge(edge_factory, mock_upstream)
    page = httpx.get(f"{edge.url}/ui")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    check_ui_headers(page)
    # no inline script or handler anywhere in the page: scripts come from /ui/app.js only
    assert re.findall(r"<script\b[^>]*>", page.text) == [
        '<script src="/ui/app.js" defer>']
    assert not re.search(r"\son[a-z]+=", page.text)
    for path, kind in (("/ui/app.js", "text/javascript"), ("/ui/app.css", "text/css")):
        asset = httpx.get(f"{edge.url}{path}")
        assert asset.status_code == 200
        assert asset.headers["content-type"].startswith(kind)
        check_ui_headers(asset)
    assert "innerHTML" not in httpx.get(f"{edge.url}/ui/app.js").text
    for method, path, status in (("GET", "/ui/nothing-here", 404), ("GET", "/ui/setup.html", 404),
                                 ("POST", "/ui", 405), ("HEAD", "/ui", 200)):
        answer = httpx.request(method, f"{edge.url}{path}")
        assert answer.status_code == status, (method, path)
        check_ui_headers(answer)


def test_without_an_admin_key_ui_only_says_how_to_set_one(
        edge_factory: Factory, mock_upstream: MockUpstream) -> None:
    edge = start_edge(edge_factory, mock_upstream, admin_key=False)
    page = httpx.get(f"{edge.url}/ui")
    assert page.status_code == 200
    check_ui_headers(page)
    assert "EDGE_ADMIN_KEY" in page.text
    assert "admin_key" in page.text
    assert "<script" not in page.text
    for path in ("/ui/app.js", "/ui/app.css"):
        assert httpx.get(f"{edge.url}{path}").status_code == 404
    for path in ("/admin/stats", "/admin/providers"):
        assert admin_get(edge, path).status_code == 404


def test_stats_count_what_was_sent(
        edge_factory: Factory, mock_upstream: MockUpstream) -> None:
    edge = start_edge(edge_factory, mock_upstream)
    for path in ("/admin/stats", "/admin/providers"):
        refused = admin_get(edge, path, key=None)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_admin_key"
        assert admin_get(edge, path, key="sk-not-the-admin").status_code == 401
    bad = admin_get(edge, "/admin/stats?window=2d")
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "window"
    assert "window" in bad.json()["error"]["message"]
    assert admin_get(edge, "/admin/stats").json()["requests"] == 0

    client = openai.OpenAI(base_url=f"{edge.url}/v1", api_key="unused", max_retries=0)
    for n in range(3):
        chat(client, f"question {n}")
    for _ in range(2):
        chat(client, "question 0")  # two L1 hits
    with pytest.raises(openai.BadRequestError):
        chat(client, "!mock status=400 say no")
    client.close()

    def settled() -> dict[str, Any] | None:
        stats: dict[str, Any] = admin_get(edge, "/admin/stats?window=5m").json()
        return stats if stats["requests"] == 6 else None

    wait_until(settled, what="six ledger rows")
    stats = settled()
    assert stats is not None
    assert stats["cache"]["hits_l1"] == 2
    assert stats["cache"]["hits_l2"] == 0
    assert stats["cache"]["misses"] == 4
    assert stats["cache"]["hit_rate_l1"] == pytest.approx(2 / 6)
    assert stats["errors"]["total"] == 1
    assert stats["errors"]["by_status"] == {"400": 1}
    # the four 401s above (by type, from the process's counter) and the upstream's 400
    assert stats["errors"]["by_type"] == {"authentication_error": 4, "upstream_error": 1}
    assert stats["latency_ms"]["p50"] is not None
    assert stats["latency_ms"]["p99"] >= stats["latency_ms"]["p50"]
    assert stats["requests_per_s"] > 0
    series = stats["series"]
    assert len(series) == 30
    assert sum(b["requests"] for b in series) == 6
    assert sum(b["hits_l1"] for b in series) == 2
    usage = admin_get(edge, "/admin/usage?since=1h&group_by=").json()["data"]
    assert stats["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in usage))
    assert stats["saved_usd"] == pytest.approx(sum(r["saved_usd"] for r in usage))
    assert stats["cost_usd"] > 0
    assert stats["saved_usd"] > 0
    for window, points in (("1h", 30), ("24h", 48)):
        longer = admin_get(edge, f"/admin/stats?window={window}").json()
        assert (longer["window"], longer["requests"], len(longer["series"])) == (window, 6, points)


def test_providers_report_health_circuit_keys_and_latency(
        edge_factory: Factory, mock_upstream: MockUpstream) -> None:
    edge = start_edge(edge_factory, mock_upstream)
    client = openai.OpenAI(base_url=f"{edge.url}/v1", api_key="unused", max_retries=0)
    chat(client, "hello providers")
    with pytest.raises(openai.BadRequestError):
        chat(client, "!mock status=400 refuse")
    client.close()
    answer = admin_get(edge, "/admin/providers")
    assert answer.status_code == 200
    assert PROVIDER_KEY[:12] not in answer.text
    body = answer.json()
    (up,) = body["data"]
    assert (up["name"], up["kind"]) == ("up", "openai")
    assert up["healthy"] is True
    assert up["circuit"]["state"] == "closed"
    assert up["keys"] == {"total": 1, "available": 1}
    assert up["errors"] == {"upstream_error": 1}
    # a 400 is the request's fault: counted by kind, but not a breaker failure
    assert up["last_error_s_ago"] is None
    assert up["circuit"]["consecutive_failures"] == 0
    deployment = next(d for d in body["deployments"]
                      if (d["provider"], d["model"]) == ("up", "gpt-4o-mini"))
    assert deployment["samples"] >= 1
    assert deployment["latency_ewma_ms"] > 0
