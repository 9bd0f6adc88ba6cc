"""The authenticator (SPEC §4 "Auth", §7): file and admin-made keys, anonymous rules,
expiry, the admin key kept apart from client keys, and model allowlists."""

from __future__ import annotations

import hashlib

import pytest

from edge.auth import ANONYMOUS, Authenticator, KeyPolicy, check_model, model_allowed
from edge.config import AuthConfig, AuthKey
from edge.errors import Forbidden, Unauthorized, render
from edge.store import KeyRecord


class Snapshot:
    """The store's key snapshot as the authenticator sees it (StoreService's two reads)."""

    def __init__(self, *records: KeyRecord) -> None:
        self.by_digest = {r.digest: r for r in records}

    def key_by_digest(self, digest: bytes) -> KeyRecord | None:
        return self.by_digest.get(digest)

    @property
    def key_count(self) -> int:
        return len(self.by_digest)


def sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def record(name: str, secret: str, **fields: object) -> KeyRecord:
    return KeyRecord(name=name, digest=bytes.fromhex(sha(secret)), key_prefix=secret[:12],
                     created_at=1.0, **fields)  # type: ignore[arg-type]


def bearer(secret: str) -> dict[bytes, bytes]:
    return {b"authorization": b"Bearer " + secret.encode()}


FILE_KEY = AuthKey(name="team-a", secret="sk-team-a", sha256=sha("sk-team-a"), rpm=5,
                   budget_usd=2.5, budget_period="month", models=("gpt-4o*", "fast"))


def test_file_keys_by_bearer_or_x_api_key_and_wrong_or_missing_is_401() -> None:
    auth = Authenticator(AuthConfig(keys=(FILE_KEY,)))
    policy = auth.authenticate(bearer("sk-team-a"), now=0.0)
    assert (policy.name, policy.source, policy.rpm, policy.budget_usd) == ("team-a", "config", 5,
                                                                           2.5)
    assert policy.budget_nano == 2_500_000_000
    assert auth.authenticate({b"x-api-key": b"sk-team-a"}, now=0.0) is policy
    with pytest.raises(Unauthorized, match="Invalid API key"):
        auth.authenticate(bearer("sk-wrong"), now=0.0)
    with pytest.raises(Unauthorized, match="Missing API key"):
        auth.authenticate({}, now=0.0)


def test_anonymous_rules() -> None:
    # no keys anywhere: every caller is anonymous, whatever key its SDK sends
    nobody = Authenticator(AuthConfig(), Snapshot())
    assert nobody.authenticate(bearer("sk-anything"), now=0.0) is ANONYMOUS
    assert nobody.authenticate({}, now=0.0) is ANONYMOUS
    # keys and allow_anonymous: no key is anonymous, a wrong key still 401
    open_door = Authenticator(AuthConfig(keys=(FILE_KEY,), allow_anonymous=True))
    assert open_door.authenticate({}, now=0.0) is ANONYMOUS
    with pytest.raises(Unauthorized):
        open_door.authenticate(bearer("sk-wrong"), now=0.0)


def test_admin_made_keys_come_from_the_store_snapshot_and_count_as_keys() -> None:
    snapshot = Snapshot(record("bob", "sk-edge-bob", tpm=9, models=("claude-*",)))
    auth = Authenticator(AuthConfig(), snapshot)
    bob = auth.authenticate(bearer("sk-edge-bob"), now=0.0)
    assert (bob.name, bob.source, bob.tpm, bob.key_prefix, bob.created_at) == (
        "bob", "admin", 9, "sk-edge-bob"[:12], 1.0)
    assert auth.authenticate(bearer("sk-edge-bob"), now=0.0) is bob  # memoised
    with pytest.raises(Unauthorized):
        auth.authenticate(bearer("sk-other"), now=0.0)
    with pytest.raises(Unauthorized):
        auth.authenticate({}, now=0.0)
    # a PATCH hands out a new record: the policy follows it
    snapshot.by_digest = {r.digest: r for r in [record("bob", "sk-edge-bob", tpm=10)]}
    assert auth.authenticate(bearer("sk-edge-bob"), now=0.0).tpm == 10
    # deleting the last admin key refuses its secret instead of making it anonymous
    snapshot.by_digest = {}
    with pytest.raises(Unauthorized, match="Invalid API key"):
        auth.authenticate(bearer("sk-edge-bob"), now=0.0)


def test_an_expired_key_is_401_key_expired() -> None:
    auth = Authenticator(AuthConfig(), Snapshot(record("old", "sk-edge-old", expires_at=100.0)))
    assert auth.authenticate(bearer("sk-edge-old"), now=99.9).name == "old"
    with pytest.raises(Unauthorized) as info:
        auth.authenticate(bearer("sk-edge-old"), now=100.0)
    assert info.value.code == "key_expired"
    status, body = render(info.value)
    assert status == 401
    assert b'"code":"key_expired"' in body


def test_the_admin_key_is_not_a_client_key_and_no_client_key_is_an_admin_key() -> None:
    auth = Authenticator(AuthConfig(keys=(FILE_KEY,), admin_key="sk-admin"),
                         Snapshot(record("bob", "sk-edge-bob")))
    assert auth.admin_enabled
    assert auth.is_admin(bearer("sk-admin"))
    assert not auth.is_admin(bearer("sk-team-a"))
    assert not auth.is_admin(bearer("sk-edge-bob"))
    assert not auth.is_admin({})
    with pytest.raises(Unauthorized):
        auth.authenticate(bearer("sk-admin"), now=0.0)
    assert not Authenticator(AuthConfig()).admin_enabled
    assert not Authenticator(AuthConfig()).is_admin(bearer("sk-admin"))


@pytest.mark.parametrize(("model", "allowed"), [
    ("gpt-4o", True), ("gpt-4o-mini", True), ("fast", True),
    ("openai/gpt-4o-mini", True),     # pinned: its model part is allowed
    ("gpt-4", False), ("claude-3-haiku-20240307", False), ("faster", False),
    ("anthropic/claude-3-haiku", False),
])
def test_model_allowlist_globs_over_the_names_clients_send(model: str, allowed: bool) -> None:
    policy = KeyPolicy.from_config(FILE_KEY)
    assert model_allowed(policy, model, {"fast"}) is allowed
    assert model_allowed(ANONYMOUS, model)  # no allowlist: any model


def test_a_refused_model_is_403_permission_error_in_both_dialects() -> None:
    policy = KeyPolicy.from_config(FILE_KEY)
    with pytest.raises(Forbidden) as info:
        check_model(policy, "gpt-4", {"fast"})
    status, body = render(info.value)
    assert status == 403
    assert b'"type":"permission_error"' in body
    assert b'"code":"model_not_allowed"' in body
    assert render(info.value, anthropic=True)[1].startswith(
        b'{"type":"error","error":{"type":"permission_error"')
    empty = KeyPolicy(name="none", source="admin", models=())
    assert not model_allowed(empty, "gpt-4o")


def test_the_secret_of_the_last_deleted_admin_key_is_refused_not_anonymous() -> None:
    snapshot = Snapshot(record("bob", "sk-edge-bob"))
    auth = Authenticator(AuthConfig(), snapshot)
    assert auth.authenticate(bearer("sk-edge-bob"), now=0.0).name == "bob"
    snapshot.by_digest = {}  # DELETE /admin/keys/bob, seen by the next table read
    with pytest.raises(Unauthorized, match="Invalid API key"):
        auth.authenticate(bearer("sk-edge-bob"), now=0.0)
