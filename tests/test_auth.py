"""Client keys end to end (SPEC §4 "Auth"): real `edge serve` processes, real SDK clients.

The loopback rule (a non-loopback bind with no keys exits 2) lives in tests/test_cli.py;
no keys on loopback (any key accepted) is what tests/test_e2e_openai.py runs with.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import orjson
import pytest
from _servers import EdgeProcess, MockUpstream

PROVIDER_KEY = "sk-auth-test-provider-5b1c0e"
TEAM_A = "edge-team-a-key-3f9d2a71"  # from the environment (env:TEAM_A_KEY)
TEAM_B = "edge-team-b-key-8c41e6d0"  # configured by its sha256 only
TEAM_C = "edge-team-c-literal-0d77ab"  # a literal in the file: warned about
ENV_ONE, ENV_TWO = "edge-env-one-71aa09", "edge-env-two-c3e5f2"  # EDGE_API_KEYS
VALID = [TEAM_A, TEAM_B, TEAM_C, ENV_ONE, ENV_TWO]
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "auth check"}]}
MESSAGE = {"model": "claude-3-5-haiku-latest", "max_tokens": 32,
           "messages": [{"role": "user", "content": "auth check"}]}


def providers(mock: MockUpstream) -> str:
    return f"""
[[providers]]
name = "mock"
kind = "openai"
base_url = "{mock.url}/v1"
api_key = "env:MOCK_KEY"
models = ["gpt-*", "text-embedding-*"]
timeout_s = 10

[[providers]]
name = "mock-claude"
kind = "anthropic"
base_url = "{mock.url}"
api_key = "env:MOCK_KEY"
models = ["claude-*"]
timeout_s = 10
"""


def keys_table(allow_anonymous: bool) -> str:
    digest = hashlib.sha256(TEAM_B.encode()).hexdigest()
    return f"""
[auth]
allow_anonymous = {"true" if allow_anonymous else "false"}
keys = [
  {{ name = "team-a", key = "env:TEAM_A_KEY" }},
  {{ name = "team-b", sha256 = "{digest}" }},
  {{ name = "team-c", key = "{TEAM_C}" }},
]
"""


ENV = {"MOCK_KEY": PROVIDER_KEY, "TEAM_A_KEY": TEAM_A, "EDGE_API_KEYS": f"{ENV_ONE}, {ENV_TWO}"}


@pytest.fixture(scope="module")
def mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockUpstream]:
    server = MockUpstream(tmp_path_factory.mktemp("mock"))
    yield server
    server.stop()


def _start(tmp: Path, **kwargs) -> Iterator[EdgeProcess]:
    edge = EdgeProcess(tmp, **kwargs)
    yield edge
    edge.stop()


@pytest.fixture(scope="module")
def keyed(mock: MockUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeProcess]:
    """Keys from the file (env, sha256, literal) and from EDGE_API_KEYS; no anonymous access."""
    yield from _start(tmp_path_factory.mktemp("keyed"), env=ENV,
                      config=keys_table(False) + providers(mock))


@pytest.fixture(scope="module")
def anonymous_ok(mock: MockUpstream,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeProcess]:
    yield from _start(tmp_path_factory.mktemp("anon"), env=ENV,
                      config=keys_table(True) + providers(mock))


def post(edge: EdgeProcess, path: str, body: dict, headers: dict[str, str] | None = None,
         ) -> httpx.Response:
    return httpx.post(f"{edge.url}{path}", json=body, headers=headers or {}, timeout=30)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def assert_openai_401(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers.get("x-request-id")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "authentication_error"
    assert error["code"] == "invalid_api_key"
    assert isinstance(error["message"], str)
    assert error["message"]


def assert_anthropic_401(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "authentication_error"
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]


# -- which keys work ---------------------------------------------------------------------


@pytest.mark.parametrize("token", VALID, ids=["env", "sha256", "literal", "env-list-1",
                                              "env-list-2"])
def test_every_configured_key_works_as_bearer_and_x_api_key(keyed: EdgeProcess,
                                                            token: str) -> None:
    by_bearer = post(keyed, "/v1/chat/completions", CHAT, bearer(token))
    assert by_bearer.status_code == 200, by_bearer.text
    by_header = post(keyed, "/v1/chat/completions", CHAT, {"x-api-key": token})
    assert by_header.status_code == 200, by_header.text


def test_bearer_scheme_is_case_insensitive(keyed: EdgeProcess) -> None:
    response = post(keyed, "/v1/chat/completions", CHAT, {"authorization": f"bearer {TEAM_A}"})
    assert response.status_code == 200


def test_official_sdks_authenticate(keyed: EdgeProcess) -> None:
    with openai.OpenAI(base_url=f"{keyed.url}/v1", api_key=TEAM_A, max_retries=0) as client:
        completion = client.chat.completions.create(**CHAT)
    assert completion.choices[0].message.content == "Mock reply to: auth check"
    with anthropic.Anthropic(base_url=keyed.url, api_key=TEAM_B, max_retries=0) as claude:
        message = claude.messages.create(**MESSAGE)
    assert message.content[0].text == "Mock reply to: auth check"

    with (pytest.raises(openai.AuthenticationError) as denied,
          openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="not-a-key",
                        max_retries=0) as wrong):
        wrong.chat.completions.create(**CHAT)
    assert denied.value.status_code == 401
    with (pytest.raises(anthropic.AuthenticationError),
          anthropic.Anthropic(base_url=keyed.url, api_key="not-a-key", max_retries=0) as bad):
        bad.messages.create(**MESSAGE)


# -- which requests are refused ------------------------------------------------------------


@pytest.mark.parametrize("headers", [
    {},
    bearer("edge-not-a-key"),
    {"x-api-key": "edge-not-a-key"},
    bearer(TEAM_A + "x"),
    bearer(TEAM_A.upper()),
    {"authorization": "Bearer"},
    {"authorization": f"Basic {TEAM_A}"},
    {"authorization": TEAM_A},
    bearer(hashlib.sha256(TEAM_B.encode()).hexdigest()),  # the digest is not the key
], ids=["missing", "wrong-bearer", "wrong-x-api-key", "suffixed", "case", "empty-bearer",
        "basic", "no-scheme", "digest-as-key"])
def test_wrong_or_missing_key_is_401(keyed: EdgeProcess, headers: dict[str, str]) -> None:
    assert_openai_401(post(keyed, "/v1/chat/completions", CHAT, headers))
    assert_openai_401(post(keyed, "/v1/embeddings",
                           {"model": "text-embedding-3-small", "input": "x"}, headers))
    assert_openai_401(httpx.get(f"{keyed.url}/v1/models", headers=headers))
    assert_anthropic_401(post(keyed, "/v1/messages", MESSAGE, headers))


def test_401_comes_before_reading_the_body(keyed: EdgeProcess) -> None:
    # An unauthenticated client learns nothing about validation from a bad body.
    response = httpx.post(f"{keyed.url}/v1/chat/completions", content=b"{not json",
                          headers={"content-type": "application/json"})
    assert_openai_401(response)


def test_health_and_metrics_need_no_key(keyed: EdgeProcess) -> None:
    for path in ("/health", "/health/live", "/health/ready", "/metrics"):
        assert httpx.get(f"{keyed.url}{path}").status_code == 200, path
        assert httpx.get(f"{keyed.url}{path}", headers=bearer("wrong")).status_code == 200, path
    assert httpx.get(f"{keyed.metrics_url}/metrics").status_code == 200


def test_literal_key_is_warned_about_at_start_up(keyed: EdgeProcess) -> None:
    lines = [orjson.loads(line) for line in keyed.output().splitlines() if line.startswith("{")]
    warnings = [line["msg"] for line in lines if line["level"] == "warning"]
    assert any("auth.keys[2].key" in w and "literal secret" in w for w in warnings), warnings
    assert TEAM_C not in keyed.output()


# -- anonymous access ---------------------------------------------------------------------


def test_allow_anonymous_serves_keyless_requests_as_their_own_tenant(
        anonymous_ok: EdgeProcess) -> None:
    chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "tenant scope"}]}
    first = post(anonymous_ok, "/v1/chat/completions", chat)
    assert first.status_code == 200
    assert first.headers["x-edge-cache"] == "miss"
    # the cache is scoped per key: a keyed client does not see the anonymous entry
    keyed_client = post(anonymous_ok, "/v1/chat/completions", chat, bearer(TEAM_A))
    assert keyed_client.status_code == 200
    assert keyed_client.headers["x-edge-cache"] == "miss"
    again = post(anonymous_ok, "/v1/chat/completions", chat)
    assert again.headers["x-edge-cache"] == "hit-l1"
    assert post(anonymous_ok, "/v1/messages", MESSAGE).status_code == 200
    assert httpx.get(f"{anonymous_ok.url}/v1/models").status_code == 200


def test_allow_anonymous_still_refuses_a_wrong_key(anonymous_ok: EdgeProcess) -> None:
    assert_openai_401(post(anonymous_ok, "/v1/chat/completions", CHAT, bearer("edge-wrong")))
    assert_anthropic_401(post(anonymous_ok, "/v1/messages", MESSAGE, {"x-api-key": "wrong"}))


def test_every_v1_path_needs_a_key_even_unknown_ones(keyed: EdgeProcess) -> None:
    """SPEC: a wrong or missing key on /v1/* is 401; with a valid key, unknown paths are 404."""
    assert_openai_401(httpx.get(f"{keyed.url}/v1/no-such-endpoint"))
    assert_openai_401(httpx.get(f"{keyed.url}/v1/chat/completions"))  # 401 before 405
    known = httpx.get(f"{keyed.url}/v1/no-such-endpoint", headers=bearer(TEAM_A))
    assert known.status_code == 404
    assert httpx.get(f"{keyed.url}/v1/chat/completions", headers=bearer(TEAM_A)).status_code == 405
    assert httpx.get(f"{keyed.url}/v1/models", headers=bearer(TEAM_A)).status_code == 200
    assert_openai_401(httpx.get(f"{keyed.url}/v1/models"))
