"""Routing scores in the hot path: circuit breakers, deployment stats and `rank`.

Every test runs on the compiled module and on its pure twin; the twin is the oracle, and
random operation sequences are replayed on both and compared value for value. Time is a
plain float passed in: no clock, no sleeps.
"""

from __future__ import annotations

import itertools
import math
import types
from dataclasses import dataclass
from typing import Any

import pytest
from _twins import both, compiled, pure
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

import edge.fastpath as fastpath

NAN = math.nan
INF = math.inf
MODEL, FAILOVER, COST, LATENCY = 0, 1, 2, 3
CLOSED, OPEN, HALF_OPEN = 0, 1, 2
ROUTING_NAMES = [
    "BREAKER_CLOSED",
    "BREAKER_HALF_OPEN",
    "BREAKER_OPEN",
    "PROBE_RETRY_S",
    "STRATEGY_COST",
    "STRATEGY_FAILOVER",
    "STRATEGY_LATENCY",
    "STRATEGY_MODEL",
    "Breaker",
    "DeploymentStats",
    "rank",
    "retry_after_all",
]


def stats_of(impl: types.ModuleType, *prices: tuple[float, float]) -> list[Any]:
    return [impl.DeploymentStats(i, o) for i, o in prices]


def measured(impl: types.ModuleType, *ewmas: float | None) -> list[Any]:
    """Stats with one sample each (so ewma is that value), or none for None."""
    out = []
    for value in ewmas:
        stat = impl.DeploymentStats(1.0, 1.0)
        if value is not None:
            stat.observe(value)
        out.append(stat)
    return out


def opened(impl: types.ModuleType, at: float, cooldown_s: float = 10.0) -> Any:
    """A breaker that opened at `at`."""
    breaker = impl.Breaker(1, cooldown_s)
    breaker.failure(at)
    return breaker


# ------------------------------------------------------------------------------ selector


def test_selector_exports_the_routing_names() -> None:
    source = compiled if fastpath.COMPILED else pure
    assert source is not None
    for name in ROUTING_NAMES:
        assert name in fastpath.__all__
        assert getattr(fastpath, name) is getattr(source, name), name
    for module in both():
        assert set(ROUTING_NAMES) <= set(module.__all__)


def test_constants_agree() -> None:
    for module in both():
        assert (
            module.STRATEGY_MODEL,
            module.STRATEGY_FAILOVER,
            module.STRATEGY_COST,
            module.STRATEGY_LATENCY,
        ) == (MODEL, FAILOVER, COST, LATENCY)
        assert (module.BREAKER_CLOSED, module.BREAKER_OPEN, module.BREAKER_HALF_OPEN) == (
            CLOSED,
            OPEN,
            HALF_OPEN,
        )
        assert module.PROBE_RETRY_S == 1.0


# ------------------------------------------------------------------------------- Breaker


def test_breaker_starts_closed(impl: types.ModuleType) -> None:
    breaker = impl.Breaker(3, 10.0)
    assert (breaker.failures, breaker.cooldown_s) == (3, 10.0)
    assert breaker.state(0.0) == CLOSED
    assert breaker.consecutive == 0
    assert breaker.last_failure_at == -INF
    assert breaker.opened_at == -INF
    assert breaker.probing is False
    assert breaker.blocked(0.0) is False
    assert breaker.retry_after(0.0) == 0.0
    assert [breaker.acquire(0.0) for _ in range(3)] == [True, True, True]  # closed: no limit
    assert breaker.probing is False


def test_breaker_opens_after_n_consecutive_failures(impl: types.ModuleType) -> None:
    breaker = impl.Breaker(3, 10.0)
    breaker.failure(1.0)
    breaker.failure(2.0)
    assert breaker.state(2.0) == CLOSED
    assert (breaker.consecutive, breaker.last_failure_at) == (2, 2.0)
    assert breaker.acquire(2.0) is True
    breaker.failure(3.0)
    assert breaker.state(3.0) == OPEN
    assert (breaker.consecutive, breaker.opened_at, breaker.last_failure_at) == (3, 3.0, 3.0)
    assert breaker.blocked(3.0) is True
    assert breaker.acquire(3.0) is False


def test_breaker_success_resets_the_count(impl: types.ModuleType) -> None:
    breaker = impl.Breaker(3, 10.0)
    breaker.failure(1.0)
    breaker.failure(2.0)
    breaker.success(3.0)
    assert breaker.consecutive == 0
    assert breaker.last_failure_at == 2.0  # kept: failover ordering looks at it
    breaker.failure(4.0)
    breaker.failure(5.0)
    assert breaker.state(5.0) == CLOSED  # 2 since the success, not 4 in all
    breaker.failure(6.0)
    assert breaker.state(6.0) == OPEN


def test_breaker_open_blocks_until_the_cooldown_then_half_opens(impl: types.ModuleType) -> None:
    breaker = opened(impl, 100.0, cooldown_s=10.0)
    for now, left in ((100.0, 10.0), (104.0, 6.0), (109.5, 0.5)):
        assert breaker.state(now) == OPEN
        assert breaker.blocked(now) is True
        assert breaker.acquire(now) is False
        assert breaker.retry_after(now) == left  # counts down
    assert breaker.state(110.0) == HALF_OPEN  # the clock alone moves it
    assert breaker.retry_after(110.0) == 0.0
    assert breaker.blocked(110.0) is False
    assert breaker.state(100.0) == OPEN  # state() reads, it does not latch


def test_breaker_half_open_admits_exactly_one_probe(impl: types.ModuleType) -> None:
    breaker = opened(impl, 0.0, cooldown_s=5.0)
    assert breaker.acquire(5.0) is True
    assert breaker.probing is True
    assert breaker.state(5.0) == HALF_OPEN
    assert breaker.blocked(5.0) is True
    assert breaker.acquire(5.0) is False
    assert breaker.acquire(50.0) is False  # however long the probe takes
    assert breaker.retry_after(6.0) == 0.0  # not open: waiting on the probe, not the clock


def test_breaker_probe_success_closes(impl: types.ModuleType) -> None:
    breaker = impl.Breaker(2, 5.0)
    breaker.failure(0.0)
    breaker.failure(0.0)
    assert breaker.acquire(5.0) is True
    breaker.success(6.0)
    assert breaker.state(6.0) == CLOSED
    assert (breaker.consecutive, breaker.probing) == (0, False)
    assert [breaker.acquire(6.0) for _ in range(2)] == [True, True]
    breaker.failure(7.0)
    assert breaker.state(7.0) == CLOSED  # the count starts again from zero


def test_breaker_probe_failure_reopens_with_a_fresh_cooldown(impl: types.ModuleType) -> None:
    breaker = impl.Breaker(5, 10.0)
    for _ in range(5):
        breaker.failure(0.0)
    assert breaker.acquire(12.0) is True
    breaker.failure(15.0)  # one failed probe is enough, whatever `failures` says
    assert breaker.state(15.0) == OPEN
    assert (breaker.opened_at, breaker.probing, breaker.consecutive) == (15.0, False, 6)
    assert breaker.retry_after(15.0) == 10.0
    assert breaker.state(24.999) == OPEN
    assert breaker.state(25.0) == HALF_OPEN
    assert breaker.acquire(25.0) is True


def test_breaker_release_frees_the_probe(impl: types.ModuleType) -> None:
    breaker = opened(impl, 0.0, cooldown_s=1.0)
    assert breaker.acquire(1.0) is True
    breaker.release(1.5)
    assert breaker.probing is False
    assert breaker.state(1.5) == HALF_OPEN
    assert breaker.blocked(1.5) is False
    assert breaker.consecutive == 1  # a cancelled attempt proves nothing either way
    assert breaker.acquire(1.5) is True
    assert breaker.acquire(1.5) is False


def test_breaker_late_outcomes_while_open(impl: types.ModuleType) -> None:
    """Attempts started before the circuit opened may still report."""
    breaker = opened(impl, 10.0, cooldown_s=10.0)
    breaker.failure(12.0)
    assert (breaker.opened_at, breaker.consecutive, breaker.last_failure_at) == (10.0, 2, 12.0)
    assert breaker.retry_after(12.0) == 8.0  # a late failure does not extend the cooldown
    breaker.success(13.0)  # but a late success is evidence enough
    assert breaker.state(13.0) == CLOSED


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((0, 1.0), ValueError),
        ((-1, 1.0), ValueError),
        ((1, -0.5), ValueError),
        ((1, NAN), ValueError),
        ((1, INF), ValueError),
        ((1.0, 1.0), TypeError),
    ],
)
def test_breaker_bad_arguments(impl: types.ModuleType, args: tuple[Any, Any], error: type) -> None:
    with pytest.raises(error):
        impl.Breaker(*args)


# ----------------------------------------------------------------------- DeploymentStats


def test_stats_ewma(impl: types.ModuleType) -> None:
    stat = impl.DeploymentStats(1.0, 2.0)
    assert math.isnan(stat.ewma)
    assert (stat.samples, stat.alpha) == (0, 0.3)
    stat.observe(1.0)
    assert (stat.ewma, stat.samples) == (1.0, 1)  # the first sample sets it
    stat.observe(2.0)
    assert stat.ewma == 0.3 * 2.0 + (1.0 - 0.3) * 1.0
    stat.observe(0.0)
    assert stat.ewma == 0.3 * 0.0 + (1.0 - 0.3) * (0.3 * 2.0 + (1.0 - 0.3) * 1.0)
    assert stat.samples == 3
    fast = impl.DeploymentStats(NAN, NAN, alpha=1.0)
    fast.observe(5.0)
    fast.observe(0.25)
    assert fast.ewma == 0.25  # alpha 1: only the last sample counts


def test_stats_refuse_bad_samples_and_keep_their_state(impl: types.ModuleType) -> None:
    stat = impl.DeploymentStats(1.0, 1.0)
    stat.observe(0.5)
    for bad in (NAN, INF, -0.1):
        with pytest.raises(ValueError, match="ttfb_s"):
            stat.observe(bad)
    assert (stat.ewma, stat.samples) == (0.5, 1)


def test_stats_estimate(impl: types.ModuleType) -> None:
    stat = impl.DeploymentStats(2.5, 10.0)
    assert (stat.input_per_mtok, stat.output_per_mtok) == (2.5, 10.0)
    assert stat.estimate(4000, 100) == ((4000 / 4) * 2.5 + 100 * 10.0) / 1e6
    assert stat.estimate(0, 0) == 0.0
    assert math.isnan(impl.DeploymentStats(NAN, 10.0).estimate(4000, 100))
    assert math.isnan(impl.DeploymentStats(2.5, NAN).estimate(4000, 100))
    assert impl.DeploymentStats(0.0, 0.0).estimate(10**9, 10**6) == 0.0
    with pytest.raises(ValueError, match="max_tokens"):
        stat.estimate(-1, 0)
    with pytest.raises(ValueError, match="max_tokens"):
        stat.estimate(0, -1)
    with pytest.raises(TypeError):
        stat.estimate(1.5, 0)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((-1.0, 1.0), "input_per_mtok"),
        ((1.0, INF), "output_per_mtok"),
        ((1.0, 1.0, 0.0), "alpha"),
        ((1.0, 1.0, 1.5), "alpha"),
        ((1.0, 1.0, NAN), "alpha"),
    ],
)
def test_stats_bad_arguments(impl: types.ModuleType, args: tuple[float, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        impl.DeploymentStats(*args)


# ---------------------------------------------------------------------------------- rank


def test_rank_model_is_config_order_without_blocked(impl: types.ModuleType) -> None:
    stats = measured(impl, 0.9, 0.1, None, 0.5)
    closed = impl.Breaker(1, 10.0)
    breakers = [closed, opened(impl, 0.0), closed, closed]
    assert impl.rank(MODEL, stats, breakers, 1.0, 100, 10, 30.0) == [0, 2, 3]


def test_rank_skips_every_candidate_of_an_open_provider(impl: types.ModuleType) -> None:
    shared = impl.Breaker(2, 10.0)
    other = impl.Breaker(2, 10.0)
    stats = measured(impl, 0.1, 0.2, 0.3)
    breakers = [shared, other, shared]  # two deployments on one provider
    assert impl.rank(LATENCY, stats, breakers, 0.0, 0, 0, 30.0) == [0, 1, 2]
    shared.failure(1.0)
    shared.failure(1.0)
    for strategy in (MODEL, FAILOVER, COST, LATENCY):
        assert impl.rank(strategy, stats, breakers, 2.0, 0, 0, 30.0) == [1]


def test_rank_failover_sends_troubled_providers_back(impl: types.ModuleType) -> None:
    stats = stats_of(impl, *[(1.0, 1.0)] * 5)
    healthy = impl.Breaker(3, 10.0)
    flaky = impl.Breaker(3, 10.0)
    flaky.failure(95.0)  # still closed, but failed 5 s ago
    half = opened(impl, 80.0)  # half-open since 90, probe free
    old = impl.Breaker(3, 10.0)
    old.failure(60.0)  # failed 40 s ago: forgiven
    breakers = [flaky, healthy, half, old, healthy]
    assert impl.rank(FAILOVER, stats, breakers, 100.0, 0, 0, 30.0) == [1, 3, 4, 0, 2]
    assert impl.rank(MODEL, stats, breakers, 100.0, 0, 0, 30.0) == [0, 1, 2, 3, 4]
    # The window is the rank's cooldown_s and is strict: a failure exactly that old is forgiven.
    assert impl.rank(FAILOVER, stats, breakers, 125.0, 0, 0, 30.0) == [0, 1, 3, 4, 2]
    assert impl.rank(FAILOVER, stats, breakers, 100.0, 0, 0, 5.0) == [0, 1, 3, 4, 2]


def test_rank_cost_cheapest_first_unknown_last(impl: types.ModuleType) -> None:
    stats = stats_of(
        impl,
        (NAN, 1.0),  # 0: unknown input price
        (3.0, 15.0),  # 1
        (0.15, 0.6),  # 2: cheapest
        (3.0, 15.0),  # 3: ties with 1
        (1.0, NAN),  # 4: unknown output price
        (2.5, 10.0),  # 5
    )
    breakers = [impl.Breaker(1, 1.0) for _ in stats]
    assert impl.rank(COST, stats, breakers, 0.0, 4000, 256, 30.0) == [2, 5, 1, 3, 0, 4]
    # With no output tokens, input prices alone decide; the unknowns stay last.
    cheap_out = stats_of(impl, (5.0, 0.0), (1.0, 100.0))
    pair = [impl.Breaker(1, 1.0), impl.Breaker(1, 1.0)]
    assert impl.rank(COST, cheap_out, pair, 0.0, 4000, 0, 30.0) == [1, 0]
    assert impl.rank(COST, cheap_out, pair, 0.0, 0, 100, 30.0) == [0, 1]


def test_rank_latency_unmeasured_first_then_fastest(impl: types.ModuleType) -> None:
    stats = measured(impl, 0.8, None, 0.2, 0.8, None, 0.5)
    breakers = [impl.Breaker(1, 1.0) for _ in stats]
    assert impl.rank(LATENCY, stats, breakers, 0.0, 0, 0, 30.0) == [1, 4, 2, 5, 0, 3]
    stats[1].observe(0.1)
    stats[4].observe(0.9)
    assert impl.rank(LATENCY, stats, breakers, 0.0, 0, 0, 30.0) == [1, 2, 5, 0, 3, 4]


def test_rank_includes_a_half_open_candidate_and_changes_nothing(impl: types.ModuleType) -> None:
    breaker = opened(impl, 0.0, cooldown_s=10.0)
    stats = measured(impl, 0.1)
    for _ in range(3):
        assert impl.rank(LATENCY, stats, [breaker], 10.0, 0, 0, 30.0) == [0]
    assert breaker.probing is False  # ranking is reading; the attempt acquires
    assert breaker.acquire(10.0) is True
    assert impl.rank(LATENCY, stats, [breaker], 10.0, 0, 0, 30.0) == []


def test_rank_empty_and_all_blocked(impl: types.ModuleType) -> None:
    assert impl.rank(COST, [], [], 0.0, 0, 0, 30.0) == []
    breakers = [opened(impl, 0.0), opened(impl, 4.0)]
    assert impl.rank(MODEL, measured(impl, None, None), breakers, 5.0, 0, 0, 30.0) == []


def test_rank_accepts_lists_and_tuples(impl: types.ModuleType) -> None:
    stats = measured(impl, 0.3, 0.1)
    breakers = [impl.Breaker(1, 1.0), impl.Breaker(1, 1.0)]
    assert impl.rank(LATENCY, tuple(stats), tuple(breakers), 0.0, 0, 0, 1.0) == [1, 0]
    assert impl.rank(LATENCY, stats, tuple(breakers), 0.0, 0, 0, 1.0) == [1, 0]


def test_rank_long_candidate_lists(impl: types.ModuleType) -> None:
    """Past the compiled module's stack buffer it sorts on the heap; same answer."""
    n = 70
    stats = measured(impl, *[(n - i) % 7 / 10 for i in range(n)])
    breakers = [impl.Breaker(1, 1.0) for _ in range(n)]
    breakers[3].failure(0.0)
    expected = sorted((i for i in range(n) if i != 3), key=lambda i: (stats[i].ewma, i))
    assert impl.rank(LATENCY, stats, breakers, 0.5, 0, 0, 1.0) == expected


def test_rank_bad_arguments(impl: types.ModuleType) -> None:
    stats = measured(impl, 0.1)
    breakers = [impl.Breaker(1, 1.0)]
    with pytest.raises(ValueError, match="strategy"):
        impl.rank(5, stats, breakers, 0.0, 0, 0, 1.0)
    with pytest.raises(ValueError, match="strategy"):
        impl.rank(-1, stats, breakers, 0.0, 0, 0, 1.0)
    with pytest.raises(TypeError):
        impl.rank(1.0, stats, breakers, 0.0, 0, 0, 1.0)
    with pytest.raises(ValueError, match="breakers"):
        impl.rank(MODEL, stats, breakers * 2, 0.0, 0, 0, 1.0)
    with pytest.raises(ValueError, match="prompt_chars"):
        impl.rank(MODEL, stats, breakers, 0.0, -1, 0, 1.0)


def test_compiled_rank_refuses_foreign_objects() -> None:
    """The compiled rank reads C fields, so it must never take the twin's objects."""
    if compiled is None:
        pytest.skip("edge._fastpath is not built")
    stats = [compiled.DeploymentStats(1.0, 1.0)]
    breakers = [compiled.Breaker(1, 1.0)]
    with pytest.raises(TypeError, match="DeploymentStats"):
        compiled.rank(MODEL, [pure.DeploymentStats(1.0, 1.0)], breakers, 0.0, 0, 0, 1.0)
    with pytest.raises(TypeError, match="Breaker"):
        compiled.rank(MODEL, stats, [pure.Breaker(1, 1.0)], 0.0, 0, 0, 1.0)
    with pytest.raises(TypeError, match="Breaker"):
        compiled.retry_after_all([object()], 0.0)


# ----------------------------------------------------------------------- retry_after_all


def test_retry_after_all(impl: types.ModuleType) -> None:
    assert impl.retry_after_all([], 0.0) == 0.0
    early, late = opened(impl, 0.0, 10.0), opened(impl, 4.0, 10.0)
    assert impl.retry_after_all([late, early], 5.0) == 5.0  # the first to half-open
    assert impl.retry_after_all([late, early, impl.Breaker(1, 1.0)], 5.0) == 0.0
    assert impl.retry_after_all([late, early], 10.0) == 0.0  # early is half-open now
    assert early.acquire(10.0) is True
    assert impl.retry_after_all([late, early], 10.0) == 1.0  # only a probe in the way
    assert impl.retry_after_all([late, early], 13.5) == 0.5  # late half-opens sooner
    assert impl.retry_after_all([early], 100.0) == 1.0


# ---------------------------------------------------------------------------- properties


@dataclass
class Scenario:
    """A recipe for candidates and their history, so each implementation builds its own."""

    failures: list[int]  # per breaker
    cooldowns: list[float]  # per breaker
    owner: list[int]  # candidate -> breaker
    prices: list[tuple[float, float]]  # per candidate
    samples: list[list[float]]  # per candidate
    events: list[tuple[str, int, float]]  # (breaker op, breaker, time step before it)
    tail: float  # time after the last event
    prompt_chars: int
    max_tokens: int
    cooldown_s: float

    def build(self, impl: types.ModuleType) -> tuple[list[Any], list[Any], float]:
        """(stats, breakers, now) for `impl`; candidates may share a breaker."""
        pool = [impl.Breaker(f, c) for f, c in zip(self.failures, self.cooldowns, strict=True)]
        now = 0.0
        for op, which, step in self.events:
            now += step
            getattr(pool[which % len(pool)], op)(now)
        stats = []
        for (input_price, output_price), taken in zip(self.prices, self.samples, strict=True):
            stat = impl.DeploymentStats(input_price, output_price)
            for sample in taken:
                stat.observe(sample)
            stats.append(stat)
        return stats, [pool[i % len(pool)] for i in self.owner], now + self.tail


STEPS = st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0, 12.0])
PRICES = st.sampled_from([NAN, 0.0, 0.15, 0.6, 2.5, 10.0])  # few values: ties happen
TTFB = st.sampled_from([0.05, 0.2, 0.2, 1.0]) | st.floats(0.0, 5.0)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    n_breakers = draw(st.integers(1, 4))
    n = draw(st.integers(0, 9))
    return Scenario(
        failures=draw(st.lists(st.integers(1, 3), min_size=n_breakers, max_size=n_breakers)),
        cooldowns=draw(
            st.lists(st.sampled_from([1.0, 5.0, 10.0]), min_size=n_breakers, max_size=n_breakers)
        ),
        owner=draw(st.lists(st.integers(0, n_breakers - 1), min_size=n, max_size=n)),
        prices=draw(st.lists(st.tuples(PRICES, PRICES), min_size=n, max_size=n)),
        samples=draw(st.lists(st.lists(TTFB, max_size=3), min_size=n, max_size=n)),
        events=draw(
            st.lists(
                st.tuples(
                    st.sampled_from(["failure", "failure", "success", "acquire", "release"]),
                    st.integers(0, n_breakers - 1),
                    STEPS,
                ),
                max_size=12,
            )
        ),
        tail=draw(STEPS),
        prompt_chars=draw(st.integers(0, 20_000)),
        max_tokens=draw(st.integers(0, 4_000)),
        cooldown_s=draw(st.sampled_from([0.0, 1.0, 5.0, 30.0])),
    )


def breaker_snapshot(breaker: Any, now: float) -> tuple[Any, ...]:
    return (
        breaker.state(now),
        breaker.blocked(now),
        breaker.retry_after(now),
        breaker.consecutive,
        breaker.last_failure_at,
        breaker.opened_at,
        breaker.probing,
    )


def check_rank_promises(
    impl: types.ModuleType,
    strategy: int,
    stats: list[Any],
    breakers: list[Any],
    now: float,
    sc: Scenario,
) -> list[int]:
    """Assert what SPEC §3 promises for one strategy; return the order."""
    before = [breaker_snapshot(b, now) for b in breakers]
    order: list[int] = impl.rank(
        strategy, stats, breakers, now, sc.prompt_chars, sc.max_tokens, sc.cooldown_s
    )
    assert [breaker_snapshot(b, now) for b in breakers] == before, "rank changed a breaker"
    usable = [i for i, b in enumerate(breakers) if not b.blocked(now)]
    assert sorted(order) == usable, "not the usable candidates"
    assert len(set(order)) == len(order), "a candidate twice"

    def index_order_within(keyed: list[tuple[Any, int]]) -> None:
        """Candidates with equal keys stay in config order."""
        for (key_a, a), (key_b, b) in itertools.pairwise(keyed):
            if key_a == key_b:
                assert a < b

    if strategy == MODEL:
        assert order == usable
    elif strategy == FAILOVER:
        penalised = [
            breakers[i].state(now) != CLOSED or now - breakers[i].last_failure_at < sc.cooldown_s
            for i in order
        ]
        assert penalised == sorted(penalised), "a penalised candidate before a good one"
        for flag in (False, True):
            group = [i for i, p in zip(order, penalised, strict=True) if p is flag]
            assert group == sorted(group), "not in config order within its group"
    elif strategy == COST:
        costs = [stats[i].estimate(sc.prompt_chars, sc.max_tokens) for i in order]
        known = [c for c in costs if not math.isnan(c)]
        assert costs[: len(known)] == known, "an unknown price before a known one"
        assert known == sorted(known)
        index_order_within(
            [("nan" if math.isnan(c) else c, i) for c, i in zip(costs, order, strict=True)]
        )
    else:
        fresh = [stats[i].samples == 0 for i in order]
        assert fresh == sorted(fresh, reverse=True), "a measured deployment before a new one"
        ewmas = [stats[i].ewma for i, new in zip(order, fresh, strict=True) if not new]
        assert ewmas == sorted(ewmas)
        index_order_within(
            [("new" if new else stats[i].ewma, i) for i, new in zip(order, fresh, strict=True)]
        )
    return order


@settings(max_examples=150, deadline=None)
@given(sc=scenarios())
def test_rank_promises_hold_and_twins_agree(sc: Scenario) -> None:
    orders: dict[str, list[list[int]]] = {}
    for module in both():
        stats, breakers, now = sc.build(module)
        orders[module.__name__] = [
            check_rank_promises(module, strategy, stats, breakers, now, sc)
            for strategy in (MODEL, FAILOVER, COST, LATENCY)
        ]
        wait = module.retry_after_all(breakers, now)
        if breakers and all(b.blocked(now) for b in breakers):
            assert wait > 0.0
        else:
            assert wait == 0.0
    assert len({repr(o) for o in orders.values()}) == 1, orders


def comparable(value: Any) -> Any:
    """NaN equals NaN here: the twins must agree on it like on any other value."""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, tuple | list):
        return [comparable(v) for v in value]
    return value


BREAKER_OPS = st.tuples(
    st.sampled_from(["failure", "failure", "success", "acquire", "release"]), st.integers(0, 2)
)
TICKS = st.tuples(st.just("tick"), STEPS)
OPS = st.lists(
    st.one_of(
        BREAKER_OPS,  # listed thrice, ticks twice: the breaker paths need several steps in a row
        BREAKER_OPS,
        BREAKER_OPS,
        TICKS,
        TICKS,
        st.tuples(st.just("observe"), st.integers(0, 4), TTFB),
        st.tuples(
            st.just("rank"),
            st.integers(0, 3),
            st.integers(0, 50_000),
            st.integers(0, 8_000),
            st.sampled_from([0.0, 1.0, 30.0]),
        ),
        st.tuples(st.just("retry_after_all")),
        st.tuples(
            st.just("estimate"), st.integers(0, 4), st.integers(0, 10**7), st.integers(0, 10**6)
        ),
    ),
    min_size=10,
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(
    prices=st.lists(st.tuples(PRICES, PRICES), min_size=5, max_size=5),
    alpha=st.sampled_from([0.3, 1.0]) | st.floats(0.01, 1.0),
    owner=st.lists(st.integers(0, 2), min_size=5, max_size=5),
    ops=OPS,
)
def test_twins_agree_step_by_step(
    prices: list[tuple[float, float]], alpha: float, owner: list[int], ops: list[Any]
) -> None:
    """The same operations on both implementations give the same results, to the last bit."""
    if compiled is None:
        pytest.skip("edge._fastpath is not built")
    worlds = []
    for module in (compiled, pure):
        pool = [module.Breaker(2, 5.0), module.Breaker(1, 1.0), module.Breaker(3, 10.0)]
        stats = [module.DeploymentStats(i, o, alpha) for i, o in prices]
        worlds.append((module, pool, stats, [pool[i] for i in owner]))
    now = 0.0
    for op in ops:
        if op[0] == "tick":
            now += op[1]
            continue
        seen = []
        for module, pool, stats, breakers in worlds:
            if op[0] == "observe":
                result: Any = stats[op[1]].observe(op[2])
            elif op[0] == "rank":
                result = module.rank(op[1], stats, breakers, now, op[2], op[3], op[4])
            elif op[0] == "retry_after_all":
                result = module.retry_after_all(breakers, now)
            elif op[0] == "estimate":
                result = stats[op[1]].estimate(op[2], op[3])
            else:
                result = getattr(pool[op[1]], op[0])(now)
            seen.append(
                comparable(
                    (
                        result,
                        [breaker_snapshot(b, now) for b in pool],
                        [(s.ewma, s.samples, s.input_per_mtok, s.output_per_mtok) for s in stats],
                    )
                )
            )
        assert seen[0] == seen[1], op


class BreakerModel(RuleBasedStateMachine):
    """Drives one implementation's Breaker beside a reference model written from the brief."""

    module: types.ModuleType  # set by machine_for

    @initialize(failures=st.integers(1, 4), cooldown=st.sampled_from([0.0, 1.0, 5.0]))
    def make(self, failures: int, cooldown: float) -> None:
        self.breaker = self.module.Breaker(failures, cooldown)
        self.failures, self.cooldown = failures, cooldown
        self.now = 0.0
        self.tripped = False  # opened and not closed since
        self.opened_at = -INF
        self.probe_out = False
        self.consecutive = 0
        self.last_failure_at = -INF

    def expected_state(self) -> int:
        if not self.tripped:
            return CLOSED
        return OPEN if self.now < self.opened_at + self.cooldown else HALF_OPEN

    @rule(dt=STEPS)
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule()
    def acquire(self) -> None:
        state = self.expected_state()
        allowed = state == CLOSED or (state == HALF_OPEN and not self.probe_out)
        if state == HALF_OPEN and allowed:
            self.probe_out = True
        assert self.breaker.acquire(self.now) is allowed

    @rule()
    def success(self) -> None:
        self.breaker.success(self.now)
        self.tripped, self.probe_out, self.consecutive = False, False, 0

    @rule()
    def failure(self) -> None:
        state = self.expected_state()
        self.breaker.failure(self.now)
        self.consecutive += 1
        self.last_failure_at = self.now
        self.probe_out = False
        if state == HALF_OPEN or (state == CLOSED and self.consecutive >= self.failures):
            self.tripped, self.opened_at = True, self.now

    @rule()
    def release(self) -> None:
        self.breaker.release(self.now)
        self.probe_out = False

    @invariant()
    def matches_model(self) -> None:
        state = self.expected_state()
        assert self.breaker.state(self.now) == state
        assert self.breaker.blocked(self.now) is (
            state == OPEN or (state == HALF_OPEN and self.probe_out)
        )
        assert self.breaker.probing is self.probe_out
        assert self.breaker.consecutive == self.consecutive
        assert self.breaker.last_failure_at == self.last_failure_at
        if self.tripped:
            assert self.breaker.opened_at == self.opened_at
        left = self.opened_at + self.cooldown - self.now if state == OPEN else 0.0
        assert self.breaker.retry_after(self.now) == left
        assert self.probe_out <= (state == HALF_OPEN), "a probe outside HALF_OPEN"


def machine_for(module: types.ModuleType) -> type[BreakerModel]:
    return type(f"BreakerModelOf_{module.__name__}", (BreakerModel,), {"module": module})


def test_breaker_state_machine(impl: types.ModuleType) -> None:
    run_state_machine_as_test(
        machine_for(impl),
        settings=settings(max_examples=150, stateful_step_count=30, deadline=None),
    )
