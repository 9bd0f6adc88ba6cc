"""The admin API, `/admin/*` (SPEC §7), as handlers that know nothing of ASGI.

    AdminAPI.handle(method, path, query_string, body, headers) -> (status, body, headers)

`handle` checks the admin key and answers every `/admin/*` path, errors included, with
JSON in OpenAI's error format; the server routes `/admin/*` to it and sends what it
returns. `dispatch` is the same without the admin-key check: the `edge keys` and
`edge usage` commands call it directly on the store, so the CLI and the HTTP API share
one implementation of key creation, validation, key objects and usage reports.

Keys made here get a secret from `os.urandom` (`sk-edge-` and 40 URL-safe characters,
240 bits), shown once in the 201 (or the rotate 200) and stored only as its SHA-256
digest with its first 12 characters as `key_prefix`. File keys (`source = "config"`) are
listed and shown but cannot be changed, rotated or deleted here (409): the file is their
source of truth.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, unquote

import orjson

from .auth import Authenticator, KeyPolicy
from .budgets import PERIODS, SpendCounters, window
from .errors import (
    BadRequest,
    Conflict,
    EdgeError,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
    render,
)
from .store import GROUP_FIELDS, KEY_FIELDS, AlreadyExists, KeyRecord, StoreService
from .store.base import StoreUnavailable

__all__ = [
    "AdminAPI",
    "Report",
    "Response",
    "SECRET_PREFIX",
    "check_key_fields",
    "key_object",
    "new_secret",
    "parse_time",
    "rfc3339",
]

Response = tuple[int, bytes, list[tuple[bytes, bytes]]]
#: A read-only report at GET /admin/{name}: the query string in, a JSON object out.
Report = Callable[[bytes], Awaitable[dict[str, Any]]]

SECRET_PREFIX = "sk-edge-"
KEY_PREFIX_LENGTH = 12
_SECRET_BYTES = 30  # 40 URL-safe base64 characters
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_RELATIVE_RE = re.compile(r"([0-9]{1,9})([dhm])")
_UNITS = {"d": 86400, "h": 3600, "m": 60}
_JSON = [(b"content-type", b"application/json")]
_DEFAULT_USAGE_S = 86400.0


def new_secret() -> str:
    """A fresh client key: `sk-edge-` and 40 URL-safe characters from `os.urandom`."""
    return SECRET_PREFIX + base64.urlsafe_b64encode(os.urandom(_SECRET_BYTES)).decode()


def rfc3339(t: float | None) -> str | None:
    """Epoch seconds as `2026-01-08T12:00:00Z` (milliseconds when not whole)."""
    if t is None:
        return None
    spec = "seconds" if t == math.floor(t) else "milliseconds"
    return datetime.fromtimestamp(t, UTC).isoformat(timespec=spec).replace("+00:00", "Z")


def parse_time(text: str, now: float, *, relative: bool = False) -> float:
    """RFC 3339 (a naive time is UTC), or with `relative` `7d`/`24h`/`30m` back from `now`.

    Raises:
        ValueError: neither form.
    """
    if relative:
        match = _RELATIVE_RE.fullmatch(text.strip())
        if match is not None:
            return now - int(match[1]) * _UNITS[match[2]]
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError("expected an RFC 3339 time (2026-01-08T12:00:00Z)"
                         + (" or 7d / 24h / 30m" if relative else "")) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


# -- key fields --------------------------------------------------------------------------

def _check_limit(value: Any) -> str | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return None
    return "expected an integer >= 1 or null"


def _check_budget(value: Any) -> str | None:
    if value is None:
        return None
    if (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0):
        return None
    return "expected a number >= 0 or null"


def _check_period(value: Any) -> str | None:
    if value is None or value in PERIODS:
        return None
    return f"expected one of {', '.join(PERIODS)}"


def _check_models(value: Any) -> str | None:
    if value is None or (isinstance(value, list)
                         and all(isinstance(m, str) and m for m in value)):
        return None
    return "expected an array of non-empty strings (model names or globs) or null"


def _check_expires(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            parse_time(value, 0.0)
        except ValueError as exc:
            return str(exc)
        return None
    return "expected an RFC 3339 time or null"


_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "rpm": _check_limit,
    "tpm": _check_limit,
    "budget_usd": _check_budget,
    "budget_period": _check_period,
    "models": _check_models,
    "expires_at": _check_expires,
}
assert tuple(_CHECKS) == KEY_FIELDS


def check_key_fields(body: Any, *, create: bool) -> tuple[str | None, dict[str, Any]]:
    """Validate a POST (`create`) or PATCH body of /admin/keys: (name, store fields).

    The fields come back in the store's form (`models` a tuple, `expires_at` epoch
    seconds, `budget_usd` a float, `budget_period` null as "total").

    Raises:
        BadRequest: naming every bad field (`param` is the first).
    """
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    problems: list[tuple[str, str]] = []
    name = None
    if create:
        raw_name = body.get("name")
        if not isinstance(raw_name, str) or not _NAME_RE.fullmatch(raw_name):
            problems.append(("name", "required: 1 to 128 letters, digits, '_', '.' or '-'"))
        elif raw_name == "anonymous":
            problems.append(("name", '"anonymous" is reserved for requests without a key'))
        else:
            name = raw_name
    elif "name" in body:
        problems.append(("name", "cannot be changed (create a new key instead)"))
    changes: dict[str, Any] = {}
    for field_name, value in body.items():
        if field_name == "name":
            continue
        check = _CHECKS.get(field_name)
        if check is None:
            problems.append((field_name[:64], f"unknown field (expected {', '.join(KEY_FIELDS)})"))
            continue
        problem = check(value)
        if problem is not None:
            problems.append((field_name, problem))
        else:
            changes[field_name] = _store_form(field_name, value)
    if problems:
        raise BadRequest("Invalid key fields: " + "; ".join(f"{f}: {p}" for f, p in problems)
                         + ".", param=problems[0][0])
    return name, changes


def _store_form(field_name: str, value: Any) -> Any:
    if value is None:
        return "total" if field_name == "budget_period" else None
    if field_name == "models":
        return tuple(value)
    if field_name == "budget_usd":
        return float(value)
    if field_name == "expires_at":
        return parse_time(value, 0.0)
    return value


def key_object(policy: KeyPolicy, spend_usd: float, now: float) -> dict[str, Any]:
    """A key as SPEC §7 shows it: never the secret or its digest."""
    return {
        "name": policy.name,
        "source": policy.source,
        "key_prefix": policy.key_prefix,
        "created_at": rfc3339(policy.created_at),
        "expires_at": rfc3339(policy.expires_at),
        "rpm": policy.rpm,
        "tpm": policy.tpm,
        "budget_usd": policy.budget_usd,
        "budget_period": policy.budget_period,
        "models": None if policy.models is None else list(policy.models),
        "spend_usd": spend_usd,
        "window_resets_at": rfc3339(window(policy.budget_period, now)[1]),
    }


def _json(status: int, payload: Any) -> Response:
    return status, orjson.dumps(payload), list(_JSON)


def _error(error: EdgeError, allow: str | None = None) -> Response:
    status, body = render(error)
    headers = [*_JSON, *error.headers()]
    if allow is not None:
        headers.append((b"allow", allow.encode()))
    return status, body, headers


class AdminAPI:
    """The `/admin/*` handlers over one store.

    Args:
        store: the running store service (its key snapshot is updated by every write).
        auth: the authenticator: the admin key and the file's keys.
        budgets: the spend counters, for `spend_usd` (reseeded when a key's period changes).
        clock: wall-clock seconds.
        reports: more GET endpoints by name (`/admin/stats`, `/admin/providers`): the
            running server's, which the CLI, with no server, does not have.
    """

    def __init__(self, store: StoreService, auth: Authenticator, budgets: SpendCounters,
                 clock: Callable[[], float] = time.time,
                 reports: Mapping[str, Report] | None = None) -> None:
        self.store = store
        self.reports = dict(reports or {})
        self.auth = auth
        self.budgets = budgets
        self.clock = clock

    async def handle(self, method: str, path: str, query_string: bytes, body: bytes,
                     headers: Mapping[bytes, bytes]) -> Response:
        """Answer one `/admin/*` request: 404 with the admin API off, 401 without the key."""
        if not self.auth.admin_enabled:
            return _error(NotFound(f"Unknown path: {path[:200]}", code="unknown_url"))
        if not self.auth.is_admin(headers):
            return _error(Unauthorized(
                "The admin API needs 'Authorization: Bearer <admin key>'.",
                code="invalid_admin_key"))
        return await self.dispatch(method, path, query_string, body)

    async def dispatch(self, method: str, path: str, query_string: bytes,
                       body: bytes) -> Response:
        """Answer an admin request already authorised (the CLI calls this directly)."""
        parts = [unquote(p) for p in path.strip("/").split("/")]
        try:
            if parts[:2] == ["admin", "usage"] and len(parts) == 2:
                self._method(method, "GET")
                return _json(200, await self.usage(query_string))
            report = self.reports.get(parts[1]) if len(parts) == 2 and parts[0] == "admin" \
                else None
            if report is not None:
                self._method(method, "GET")
                return _json(200, await report(query_string))
            if parts[:2] != ["admin", "keys"] or len(parts) > 4:
                raise NotFound(f"Unknown path: {path[:200]}", code="unknown_url")
            if len(parts) == 2:
                if self._method(method, "GET", "POST") == "GET":
                    return _json(200, await self.list_keys())
                return _json(201, await self.create_key(self._body(body)))
            name = parts[2]
            if len(parts) == 4:
                if parts[3] != "rotate":
                    raise NotFound(f"Unknown path: {path[:200]}", code="unknown_url")
                self._method(method, "POST")
                return _json(200, await self.rotate_key(name))
            verb = self._method(method, "GET", "PATCH", "DELETE")
            if verb == "GET":
                return _json(200, await self.get_key(name))
            if verb == "PATCH":
                return _json(200, await self.update_key(name, self._body(body)))
            await self.delete_key(name)
            return 204, b"", []
        except _WrongMethod as wrong:
            return _error(MethodNotAllowed(
                f"Method {method[:16]} is not allowed on {path[:200]}; use {wrong.allow}."),
                allow=wrong.allow)
        except StoreUnavailable:
            return _error(ServiceUnavailable("The store is unavailable; try again shortly.",
                                             code="store_unavailable", retry_after=1.0))
        except EdgeError as error:
            return _error(error)

    # -- keys ----------------------------------------------------------------------------

    async def list_keys(self) -> dict[str, Any]:
        now = self.clock()
        policies = [*self.auth.config_policies.values(),
                    *(KeyPolicy.from_record(k) for k in await self.store.list_keys())]
        return {"data": [self._object(p, now) for p in policies]}

    async def get_key(self, name: str) -> dict[str, Any]:
        return self._object(await self._policy(name), self.clock())

    async def create_key(self, body: Any) -> dict[str, Any]:
        name, fields = check_key_fields(body, create=True)
        assert name is not None
        if name in self.auth.config_policies:
            raise Conflict(f"A key named '{name}' already exists (defined in the config file).",
                           param="name", code="key_exists")
        now = self.clock()
        secret = new_secret()
        record = KeyRecord(name=name, digest=hashlib.sha256(secret.encode()).digest(),
                           key_prefix=secret[:KEY_PREFIX_LENGTH], created_at=now, **fields)
        try:
            await self.store.create_key(record)
        except AlreadyExists:
            raise Conflict(f"A key named '{name}' already exists.", param="name",
                           code="key_exists") from None
        return {**self._object(KeyPolicy.from_record(record), now), "key": secret}

    async def update_key(self, name: str, body: Any) -> dict[str, Any]:
        _, changes = check_key_fields(body, create=False)
        self._not_a_file_key(name)
        record = await self.store.update_key(name, changes)
        if record is None:
            raise _unknown_key(name)
        policy = KeyPolicy.from_record(record)
        if "budget_period" in changes:
            try:  # the new window's spend, from the ledger; counting starts at 0 without it
                await self.budgets.seed(self.store, [policy], self.clock())
            except StoreUnavailable:
                pass
        return self._object(policy, self.clock())

    async def rotate_key(self, name: str) -> dict[str, Any]:
        self._not_a_file_key(name)
        secret = new_secret()
        record = await self.store.rotate_key(name, hashlib.sha256(secret.encode()).digest(),
                                             secret[:KEY_PREFIX_LENGTH])
        if record is None:
            raise _unknown_key(name)
        return {**self._object(KeyPolicy.from_record(record), self.clock()), "key": secret}

    async def delete_key(self, name: str) -> None:
        self._not_a_file_key(name)
        if not await self.store.delete_key(name):
            raise _unknown_key(name)

    # -- usage ---------------------------------------------------------------------------

    async def usage(self, query_string: bytes) -> dict[str, Any]:
        """GET /admin/usage: the ledger's aggregates over [since, until)."""
        query = dict(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))
        now = self.clock()
        bounds = {"since": now - _DEFAULT_USAGE_S, "until": now}
        for param in bounds:
            text = query.get(param, "")
            if text:
                try:
                    bounds[param] = parse_time(text, now, relative=True)
                except ValueError as exc:
                    raise BadRequest(f"Invalid {param}: {exc}.", param=param) from None
        since, until = bounds["since"], bounds["until"]
        if since > until:
            raise BadRequest("since must not be later than until.", param="since")
        group_by = [g.strip() for g in (query.get("group_by") or "key").split(",")]
        bad = [g for g in group_by if g not in GROUP_FIELDS]
        if bad:
            raise BadRequest(f"Cannot group usage by {', '.join(repr(b[:32]) for b in bad)}; "
                             f"choose from {', '.join(GROUP_FIELDS)}.", param="group_by")
        rows = await self.store.aggregate_usage(since, until, group_by,
                                                query.get("key") or None)
        return {"data": rows, "since": rfc3339(since), "until": rfc3339(until)}

    # -- helpers -------------------------------------------------------------------------

    def _object(self, policy: KeyPolicy, now: float) -> dict[str, Any]:
        return key_object(policy, self.budgets.spent(policy.name, policy.budget_period, now),
                          now)

    async def _policy(self, name: str) -> KeyPolicy:
        policy = self.auth.config_policies.get(name)
        if policy is not None:
            return policy
        record = await self.store.get_key(name)
        if record is None:
            raise _unknown_key(name)
        return KeyPolicy.from_record(record)

    def _not_a_file_key(self, name: str) -> None:
        if name in self.auth.config_policies:
            raise Conflict(f"Key '{name}' is defined in the config file; change it there.",
                           code="config_key")

    @staticmethod
    def _body(body: bytes) -> Any:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadRequest("The request body is not valid JSON.") from None

    @staticmethod
    def _method(method: str, *allowed: str) -> str:
        if method not in allowed:
            raise _WrongMethod(", ".join(allowed))
        return method


class _WrongMethod(Exception):
    def __init__(self, allow: str) -> None:
        super().__init__(allow)
        self.allow = allow


def _unknown_key(name: str) -> NotFound:
    return NotFound(f"No key named '{name[:128]}'.", param="name", code="key_not_found")
