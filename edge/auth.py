"""Who is calling: client keys for /v1/*, the admin key for /admin/* (SPEC §4 "Auth", §7).

Theory of operation
-------------------
Clients send `Authorization: Bearer KEY` or `x-api-key: KEY`. A key is known by the
SHA-256 digest of its secret only, and comes from one of two places:

* the config file and EDGE_API_KEYS (`source = "config"`), whose policies are built once
  here at start-up;
* the store (`source = "admin"`): keys made through the admin API or `edge keys`, read
  from `StoreService.key_by_digest`, a dict lookup in the store's last table read with no
  IO. The policy made from a store record is memoised per digest and rebuilt only when
  the store hands out a different record (after a PATCH or a re-read), so a request pays
  for one digest, two dict lookups and a constant-time compare.

Anonymous access keeps the rules of SPEC §4: with no keys at all every request is the
tenant `anonymous` (the config refuses to bind a non-loopback address that way unless
`allow_anonymous` is on), whatever key it sends, since SDKs always send one; once keys
exist a wrong key is 401, and a missing one is 401 unless `allow_anonymous`. Admin-made
keys count as existing from the moment this process has seen one, for the rest of its
life: deleting the last admin key must make its secret fail (401), not turn it into an
anonymous caller.

The admin key is not a client key (a request to /v1/* with it is 401, even while no
client keys exist) and no client key is an admin key: `is_admin` compares only against
the admin key.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from .config import AuthConfig, AuthKey
from .errors import Forbidden, Unauthorized
from .store.base import KeyRecord, to_nano

__all__ = ["ANONYMOUS", "Authenticator", "KeyPolicy", "KeySource", "model_allowed"]

Headers = Mapping[bytes, bytes]


class KeySource(Protocol):
    """What the authenticator needs of the store (`StoreService` has it)."""

    def key_by_digest(self, digest: bytes) -> KeyRecord | None: ...

    @property
    def key_count(self) -> int: ...


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """Everything the request path enforces for one client key, whichever its source.

    `models` None means any model; `budget_usd` None means no budget; times are epoch
    seconds. `budget_nano` and `_models_re` are derived once, here, not per request.
    """

    name: str
    source: str  # "config" | "admin" | "anonymous"
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None
    budget_period: str = "total"
    models: tuple[str, ...] | None = None
    expires_at: float | None = None
    key_prefix: str | None = None
    created_at: float | None = None
    budget_nano: int | None = field(init=False, repr=False, compare=False)
    _models_re: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        nano = None if self.budget_usd is None else to_nano(self.budget_usd)
        object.__setattr__(self, "budget_nano", nano)
        pattern = None
        if self.models is not None:
            # one alternation of the translated globs: a match is one regex call
            pattern = re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in self.models)
                                 or "(?!)")
        object.__setattr__(self, "_models_re", pattern)

    @classmethod
    def from_config(cls, key: AuthKey) -> KeyPolicy:
        return cls(name=key.name, source="config", rpm=key.rpm, tpm=key.tpm,
                   budget_usd=key.budget_usd, budget_period=key.budget_period,
                   models=key.models)

    @classmethod
    def from_record(cls, key: KeyRecord) -> KeyPolicy:
        return cls(name=key.name, source="admin", rpm=key.rpm, tpm=key.tpm,
                   budget_usd=key.budget_usd, budget_period=key.budget_period,
                   models=key.models, expires_at=key.expires_at, key_prefix=key.key_prefix,
                   created_at=key.created_at)


#: The tenant of requests served without a key.
ANONYMOUS = KeyPolicy(name="anonymous", source="anonymous")


def model_allowed(policy: KeyPolicy, model: str, groups: Collection[str] = ()) -> bool:
    """May `policy` ask for `model`, the name the client sent?

    The key's globs are matched against that name, so a group name (`fast`) is allowed
    by a glob that matches it, whatever its deployments are. A pinned `provider/model`
    (not itself a group name in `groups`) is also allowed when its model part matches:
    pinning a provider does not widen or narrow what a key may use.
    """
    pattern = policy._models_re
    if pattern is None or pattern.match(model) is not None:
        return True
    _, slash, upstream = model.partition("/")
    return bool(slash) and model not in groups and pattern.match(upstream) is not None


def check_model(policy: KeyPolicy, model: str, groups: Collection[str] = ()) -> None:
    """Raise the 403 of SPEC §7 when `policy` may not use `model`."""
    if not model_allowed(policy, model, groups):
        raise Forbidden(f"Key '{policy.name}' is not allowed to use model '{model[:200]}'.",
                        param="model")


def _token(headers: Headers) -> bytes | None:
    auth = headers.get(b"authorization")
    if auth is not None:
        scheme, _, value = auth.partition(b" ")
        if scheme.lower() == b"bearer":
            return value.strip()
    return headers.get(b"x-api-key")


class Authenticator:
    """Turns a request's headers into a `KeyPolicy`, or refuses it.

    Args:
        config: `[auth]` as loaded (client keys already digested; the admin key).
        store: the store's key snapshot, or None when admin-made keys are not in use.
    """

    def __init__(self, config: AuthConfig, store: KeySource | None = None) -> None:
        # digest -> (the same digest, policy): the digest is decoded once, not per request
        self._config_keys = {bytes.fromhex(k.sha256): (bytes.fromhex(k.sha256),
                                                       KeyPolicy.from_config(k))
                             for k in config.keys}
        self.config_policies = {p.name: p for _, p in self._config_keys.values()}
        self._allow_anonymous = config.allow_anonymous
        self._store = store
        self._admin: dict[bytes, KeyPolicy] = {}
        self._admin_records: dict[bytes, KeyRecord] = {}
        self._seen_admin_key = False
        self._admin_digest = (None if config.admin_key is None
                              else hashlib.sha256(config.admin_key.encode()).digest())

    @property
    def admin_enabled(self) -> bool:
        """True when an admin key is configured (else /admin/* answers 404)."""
        return self._admin_digest is not None

    def authenticate(self, headers: Headers, now: float) -> KeyPolicy:
        """The caller's policy.

        Raises:
            Unauthorized: a missing or wrong key while keys exist, or an expired key
                (code `key_expired`).
        """
        token = _token(headers)
        if not token:
            if self._allow_anonymous or not self._keys_exist():
                return ANONYMOUS
            raise Unauthorized("Missing API key: send 'Authorization: Bearer KEY' or 'x-api-key'.")
        if self._admin_digest is None and not self._keys_exist():
            return ANONYMOUS  # no keys anywhere: any key is the anonymous tenant, unhashed
        digest = hashlib.sha256(token).digest()
        if digest == self._admin_digest:
            raise Unauthorized("The admin key is not a client key; it opens /admin/* only.")
        found = self._config_keys.get(digest)
        if found is not None and hmac.compare_digest(found[0], digest):
            return found[1]
        policy = self._from_store(digest)
        if policy is None:
            if not self._keys_exist():
                return ANONYMOUS  # no keys anywhere: any key is the anonymous tenant
            raise Unauthorized("Invalid API key.")
        if policy.expires_at is not None and now >= policy.expires_at:
            raise Unauthorized(f"API key '{policy.name}' has expired.", code="key_expired")
        return policy

    def is_admin(self, headers: Headers) -> bool:
        """True when the request carries `Authorization: Bearer <admin key>`."""
        expected = self._admin_digest
        auth = headers.get(b"authorization")
        if expected is None or auth is None:
            return False
        scheme, _, value = auth.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(hashlib.sha256(value.strip()).digest(), expected)

    def _keys_exist(self) -> bool:
        """Config keys, or admin keys in the store now or at any time this process looked."""
        if self._config_keys or self._seen_admin_key:
            return True
        if self._store is not None and self._store.key_count:
            self._seen_admin_key = True
        return self._seen_admin_key

    def _from_store(self, digest: bytes) -> KeyPolicy | None:
        if self._store is None:
            return None
        record = self._store.key_by_digest(digest)
        if record is None or not hmac.compare_digest(record.digest, digest):
            self._admin.pop(digest, None)
            self._admin_records.pop(digest, None)
            return None
        self._seen_admin_key = True
        if self._admin_records.get(digest) is not record:
            self._admin[digest] = KeyPolicy.from_record(record)
            self._admin_records[digest] = record
        return self._admin[digest]
