"""edge.keypool's edge cases, on an injected clock; and the config errors of `api_keys`.

The behaviour through the real server is in test_e2e_pools.py; here are the cases a
server run cannot reach cheaply: rests expiring, the bounds of a rest, the order of picks.
"""

from __future__ import annotations

import email.utils
import time
from pathlib import Path

import pytest

from edge.config import ConfigError, ProviderKey, load_config
from edge.keypool import DEFAULT_REST_S, MAX_REST_S, MIN_REST_S, KeyPool, KeysResting
from edge.providers.base import retry_after_seconds


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pool(*keys: ProviderKey, rests: bool = True) -> tuple[KeyPool, Clock]:
    clock = Clock()
    return KeyPool(keys, ("authorization", "Bearer {}"), clock, rests=rests), clock


def secrets_of(keys: KeyPool, picks: int) -> list[str]:
    out = []
    for _ in range(picks):
        key = keys.pick()
        assert key is not None
        out.append(key.secret)
    return out


# --------------------------------------------------------------------------- spread


def test_picks_interleave_by_weight_in_config_order() -> None:
    keys, _ = pool(ProviderKey("a", weight=1), ProviderKey("b", weight=3))
    picked = secrets_of(keys, 8)
    assert picked.count("a") == 2
    assert picked.count("b") == 6
    assert picked[:4] == ["b", "a", "b", "b"]  # smooth: no burst of b's first


def test_the_header_is_prebuilt_in_the_kinds_format() -> None:
    keys, _ = pool(ProviderKey("sk-x"))
    key = keys.pick()
    assert key is not None
    assert (keys.header_name, key.header_value) == ("authorization", "Bearer sk-x")
    assert "sk-x" not in repr(ProviderKey("sk-x"))


def test_a_provider_without_keys_picks_none() -> None:
    keys = KeyPool((), ("authorization", "Bearer {}"))
    assert keys.pick() is None
    assert keys.usable()


# --------------------------------------------------------------------------- rests


def test_a_rest_expires_on_the_clock() -> None:
    keys, clock = pool(ProviderKey("a"), ProviderKey("b"))
    first = keys.pick()
    assert first is not None
    assert keys.rest(first, 10.0) is True  # another key carries on
    assert keys.available() == 1
    assert secrets_of(keys, 3) == ["b", "b", "b"]
    clock.now += 9.9
    assert keys.available() == 1
    clock.now += 0.2
    assert keys.available() == 2
    assert set(secrets_of(keys, 2)) == {"a", "b"}  # back, and starting even


def test_every_key_resting_blocks_the_pool_until_the_soonest_frees() -> None:
    keys, clock = pool(ProviderKey("a"), ProviderKey("b"))
    a, b = keys.keys
    assert keys.rest(a, 20.0) is True
    assert keys.rest(b, 5.0) is False  # the wait is the pool's now
    assert not keys.usable()
    assert keys.retry_after() == 5.0
    with pytest.raises(KeysResting) as caught:
        keys.pick()
    assert caught.value.status == 503
    assert caught.value.retry_after == 5.0
    clock.now += 5.0
    assert keys.usable()
    assert keys.retry_after() == 0.0
    assert secrets_of(keys, 1) == ["b"]
    assert keys.blocked_until == 0.0


def test_a_missing_retry_after_rests_the_default() -> None:
    keys, _ = pool(ProviderKey("a"), ProviderKey("b"))
    keys.rest(keys.keys[0], None)
    keys.rest(keys.keys[1], None)
    assert keys.retry_after() == DEFAULT_REST_S == 30.0


@pytest.mark.parametrize(("told", "rests"), [
    (0.0, MIN_REST_S),  # "retry now" still moves the retry to another key
    (1e7, MAX_REST_S),  # four months: capped at an hour
    (MAX_REST_S + 1, MAX_REST_S),
    (120.0, 120.0),
])
def test_a_rest_is_bounded(told: float, rests: float) -> None:
    keys, _ = pool(ProviderKey("a"))
    keys.rest(keys.keys[0], told)
    assert keys.retry_after() == rests


def test_each_rest_is_counted_and_a_single_api_key_never_rests() -> None:
    keys, _ = pool(ProviderKey("a"), ProviderKey("b"))
    counted: list[int] = []
    keys.on_rest = lambda: counted.append(1)
    keys.rest(keys.keys[0], 1.0)
    assert counted == [1]
    single, _ = pool(ProviderKey("only"), rests=False)
    single.on_rest = lambda: counted.append(1)
    assert single.rest(single.keys[0], 60.0) is False
    assert single.usable()
    assert counted == [1]


def test_a_longer_rest_is_not_shortened_by_a_later_429() -> None:
    keys, _ = pool(ProviderKey("a"))
    keys.rest(keys.keys[0], 100.0)
    keys.rest(keys.keys[0], 2.0)
    assert keys.retry_after() == 100.0


# --------------------------------------------------------------------------- Retry-After


def test_retry_after_in_both_forms() -> None:
    assert retry_after_seconds("60") == 60.0
    assert retry_after_seconds("1.5") == 1.5
    in_two_minutes = retry_after_seconds(email.utils.formatdate(time.time() + 120,
                                                                usegmt=True))
    assert in_two_minutes is not None
    assert 100 < in_two_minutes <= 120
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # past: now
    for unreadable in (None, "", "soon", "-5", "inf", "1e999", "nan"):
        assert retry_after_seconds(unreadable) is None


# --------------------------------------------------------------------------- config


def config_error(tmp_path: Path, table: str) -> str:
    path = tmp_path / "edge.toml"
    path.write_text(f'[[providers]]\nname = "up"\nmodels = ["*"]\n{table}\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={"K1": "sk-one", "K2": "sk-two"})
    return str(caught.value)


@pytest.mark.parametrize("weight", ["0", "-2", "true", '"heavy"'])
def test_a_weight_that_is_not_positive_names_the_field(tmp_path: Path, weight: str) -> None:
    message = config_error(tmp_path, 'kind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
                           f'api_keys = ["env:K1", {{ key = "env:K2", weight = {weight} }}]')
    assert "providers[0].api_keys[1].weight: expected a number" in message


def test_bedrock_refuses_a_pool(tmp_path: Path) -> None:
    message = config_error(tmp_path, 'kind = "bedrock"\nregion = "us-east-1"\n'
                           'api_keys = ["env:K1"]')
    assert "providers[0].api_keys: not valid with kind = \"bedrock\"" in message


def test_pool_entries_are_checked(tmp_path: Path) -> None:
    base = 'kind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
    assert "api_keys: empty" in config_error(tmp_path, base + "api_keys = []")
    assert "api_keys[0].key: missing" in config_error(
        tmp_path, base + "api_keys = [{ weight = 2 }]")
    assert "api_keys[1]: the same key as" in config_error(
        tmp_path, base + 'api_keys = ["env:K1", "env:K1"]')
    assert "api_key and api_keys are both set" in config_error(
        tmp_path, base + 'api_key = "env:K1"\napi_keys = ["env:K2"]')
    assert "api_keys[0].rpm" in config_error(
        tmp_path, base + 'api_keys = [{ key = "env:K1", rpm = 0 }]')
