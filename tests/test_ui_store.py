"""`usage_summary`, the ledger query behind the dashboard, alike on memory, SQLite and
Postgres: buckets counted from `since`, hits by tier, errors by status, percentiles."""

from __future__ import annotations

import dataclasses

import pytest
from test_store import T0, _row, backend, store_url  # noqa: F401 - fixtures

from edge.store import Backend


def test_summary_buckets_tiers_errors_and_percentiles(backend: Backend) -> None:  # noqa: F811
    rows = [
        _row(0, time=T0 + 1, cost=0.002),
        _row(1, time=T0 + 9.5, cache="hit-l1", provider=None, cost=0.0, saved=0.002),
        _row(2, time=T0 + 10, cache="hit-l2", provider=None, cost=0.0, saved=0.001),
        _row(3, time=T0 + 25, cost=0.0),
        _row(4, time=T0 + 30, cost=0.5),  # at `until`: outside
        _row(5, time=T0 - 1, cost=0.5),  # before `since`: outside
    ]
    rows[3] = dataclasses.replace(rows[3], status=429, latency_ms=900.0)
    for n, row in enumerate(rows[:3]):
        row.latency_ms = float(10 * (n + 1))
    backend.insert_usage(rows)
    summary = backend.usage_summary(T0, T0 + 30, 10)
    assert summary.buckets == [
        {"bucket": 0, "requests": 2, "hits_l1": 1, "hits_l2": 0, "errors": 0,
         "cost_usd": pytest.approx(0.002), "saved_usd": pytest.approx(0.002)},
        {"bucket": 1, "requests": 1, "hits_l1": 0, "hits_l2": 1, "errors": 0,
         "cost_usd": 0.0, "saved_usd": pytest.approx(0.001)},
        {"bucket": 2, "requests": 1, "hits_l1": 0, "hits_l2": 0, "errors": 1,
         "cost_usd": 0.0, "saved_usd": 0.0},
    ]
    assert summary.errors_by_status == {429: 1}
    assert summary.p50_ms == 20.0  # latencies 10, 20, 30, 900: nearest rank 2 of 4
    assert summary.p99_ms == 900.0


def test_an_empty_window_has_no_buckets_or_percentiles(backend: Backend) -> None:  # noqa: F811
    backend.insert_usage([_row(0, time=T0)])
    summary = backend.usage_summary(T0 + 100, T0 + 200, 60)
    assert (summary.buckets, summary.errors_by_status) == ([], {})
    assert (summary.p50_ms, summary.p99_ms) == (None, None)
    with pytest.raises(ValueError, match="bucket_s"):
        backend.usage_summary(T0, T0 + 1, 0)
