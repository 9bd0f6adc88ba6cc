"""`StoreService`: the store driven from Trio, so that it never fails or delays a request.

Theory of operation
-------------------
Every backend call runs in a worker thread (`trio.to_thread.run_sync`) under the
service's `CapacityLimiter`, so at most `threads` calls (and database connections) are
busy at once. Like the Redis tier (`edge.l2`), the service keeps a health state that only
the Trio thread changes:

* **Fail fast when down.** A call that fails with `StoreUnavailable` (or overruns its
  deadline) marks the service down and calls `on_error` once; while down, calls raise
  `StoreUnavailable` at once without touching the database. A background probe pings
  with exponential backoff (`probe_interval` doubling up to `max_probe_interval`) and
  marks the service up again when the database answers. The first probe runs inside
  `run()` before it reports started, so a healthy store is upgraded and its keys read
  before the first request, and a dead one delays start-up by one bounded probe only.
* **The ledger never waits.** `record_usage` appends a row to a bounded list (no task is
  woken per row: that would cost every request a reschedule); a full list drops the row
  and counts it (`rows_dropped`, the metric `llm_edge_usage_rows_dropped_total`). A
  writer task takes rows in batches of up to `batch_size` every `flush_interval`, or as
  soon as a batch is full, so a row waits at most `flush_interval`. A batch whose
  write fails is kept (`_pending`) and written again once the probe sees the database
  back, while new rows queue behind it; so an outage shorter than the queue loses
  nothing, and a longer one loses only what the full queue refused. Writes are never
  abandoned mid-way (a row is either written once or still pending), so a write in
  progress at shutdown finishes first, bounded by the database's own timeouts.
* **Keys are served from the last table read.** A poller asks for `keys_version` every
  `key_poll_interval` and re-reads the keys table only when it changed; the request path
  looks keys up in that snapshot (`key_by_digest`), a dict read with no IO. Key writes
  made through this service update the snapshot at once.
* **Stored responses share commits.** `put_response` returns once its response is
  written (a follow-up may name it at once, SPEC §8), but requests arriving together
  are written together: a writer task takes every response queued since its last write
  and writes them in one transaction from one thread, so under load one thread hop and
  one commit serve many requests (group commit), and a lone request waits for one. An
  in-process store (`memory://`) that no thread holds is written on the spot instead
  (`Backend.now`): no hop, no task woken.
* **Retention.** A cleanup task deletes ledger rows older than `retention_days` and
  stored responses past their `expires_at`, at start and every `cleanup_interval`.

`aclose()` stops the background tasks, flushes the rows still queued (within
`close_timeout`; what cannot be written is counted as dropped) and closes the backend.
"""

from __future__ import annotations

import enum
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import trio

from .base import (
    BUSY,
    Backend,
    Busy,
    KeyRecord,
    StoredResponse,
    StoreError,
    StoreUnavailable,
    UsageRow,
    UsageSummary,
)

__all__ = ["StoreService"]

T = TypeVar("T")

_log = logging.getLogger(__name__)

_DAY_S = 86400.0


class _State(enum.Enum):
    UNKNOWN = "unknown"  # not probed yet: behaves like DOWN
    UP = "up"
    DOWN = "down"
    CLOSED = "closed"


class _Put:
    """One response waiting for the writer, and how its write ended."""

    __slots__ = ("response", "done", "error")

    def __init__(self, response: StoredResponse) -> None:
        self.response = response
        self.done = trio.Event()
        self.error: StoreError | None = None


class StoreService:
    """A `Backend` for Trio code, with health, the batched ledger and retention.

    Args:
        backend: what `open_store(url)` returned; the service closes it in `aclose`.
        threads: worker threads (so database connections) in use at once.
        queue_size: ledger rows that may wait for the writer before drops begin.
        batch_size: most rows written in one transaction.
        flush_interval: seconds between the writer's looks at the queued rows.
        retention_days: ledger rows older than this are deleted.
        cleanup_interval: seconds between retention passes.
        key_poll_interval: seconds between checks of `keys_version`.
        probe_interval: first pause between health probes while down (seconds); it
            doubles after each failed probe up to `max_probe_interval`.
        call_timeout: deadline of one call made for a request or the admin API.
        background_timeout: deadline of a probe or a retention pass.
        close_timeout: how long `aclose` may spend flushing the ledger.
        clock: wall-clock time in epoch seconds (retention and expiry are judged by it).
        on_error: called with a short reason each time the store goes down.

    Counters (plain ints, for metrics): `rows_written`, `rows_dropped`, `errors` (calls
    and writes that failed), `probe_failures`.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        threads: int = 8,
        queue_size: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        retention_days: float = 90.0,
        cleanup_interval: float = 3600.0,
        key_poll_interval: float = 1.0,
        probe_interval: float = 0.25,
        max_probe_interval: float = 5.0,
        call_timeout: float = 5.0,
        background_timeout: float = 60.0,
        close_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        if threads < 1 or queue_size < 1 or batch_size < 1:
            raise ValueError("store threads, queue_size and batch_size must be at least 1")
        if min(flush_interval, cleanup_interval, key_poll_interval, probe_interval) <= 0:
            raise ValueError("store intervals must be positive")
        if retention_days <= 0:
            raise ValueError("usage_retention_days must be positive")
        self.backend = backend
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._retention_s = retention_days * _DAY_S
        self._cleanup_interval = cleanup_interval
        self._key_poll_interval = key_poll_interval
        self._probe_interval = probe_interval
        self._max_probe_interval = max(probe_interval, max_probe_interval)
        self._call_timeout = call_timeout
        self._background_timeout = background_timeout
        self._close_timeout = close_timeout
        self._clock = clock
        self._on_error = on_error

        self._limiter = trio.CapacityLimiter(threads)
        # Rows wait in a plain list that the writer takes every `flush_interval` (or as soon
        # as a batch is full): queueing a row is an append, with no task to wake per row.
        self._queue_size = queue_size
        self._queued: list[UsageRow] = []
        self._batch_full = trio.Event()
        self._accepting = True
        self._pending: list[UsageRow] = []
        self._state = _State.UNKNOWN
        self._generation = 0
        self._went_down = trio.Event()
        self._came_up = trio.Event()
        self._probe_lock = trio.Lock()
        self._tasks: trio.CancelScope | None = None
        self._stopped = trio.Event()
        self._stopped.set()

        self._puts: list[_Put] = []  # responses waiting for the writer
        self._puts_queued = trio.Event()

        self._keys_version: int | None = None
        self._by_name: dict[str, KeyRecord] = {}
        self._by_digest: dict[bytes, KeyRecord] = {}

        self.rows_written = 0
        self.rows_dropped = 0
        self.errors = 0
        self.probe_failures = 0

    @property
    def healthy(self) -> bool:
        """True once a probe succeeded and nothing has failed since (`/health` `store.healthy`)."""
        return self._state is _State.UP

    @property
    def queued(self) -> int:
        """Ledger rows accepted and not yet written."""
        return len(self._queued) + len(self._pending)

    # -- the request path: no IO ----------------------------------------------------

    def record_usage(self, row: UsageRow) -> bool:
        """Queue a ledger row; False (and one more `rows_dropped`) if the queue is full."""
        queued = self._queued
        if len(queued) >= self._queue_size or not self._accepting:
            self.rows_dropped += 1
            return False
        queued.append(row)
        if len(queued) == self._batch_size:
            self._batch_full.set()
        return True

    def key_by_digest(self, digest: bytes) -> KeyRecord | None:
        """The admin-made key with this secret digest, from the last table read."""
        return self._by_digest.get(digest)

    @property
    def key_count(self) -> int:
        """How many admin-made keys the last table read holds."""
        return len(self._by_digest)

    def cached_keys(self) -> list[KeyRecord]:
        """Every admin-made key as of the last table read, ordered by name."""
        return [self._by_name[name] for name in sorted(self._by_name)]

    # -- calls ----------------------------------------------------------------------

    async def create_key(self, key: KeyRecord) -> None:
        await self._call(self.backend.create_key, key)
        self._remember(key)

    async def get_key(self, name: str) -> KeyRecord | None:
        return await self._call(self.backend.get_key, name)

    async def list_keys(self) -> list[KeyRecord]:
        return await self._call(self.backend.list_keys)

    async def find_key(self, digest: bytes) -> KeyRecord | None:
        return await self._call(self.backend.find_key, digest)

    async def update_key(self, name: str, changes: Mapping[str, Any]) -> KeyRecord | None:
        key = await self._call(self.backend.update_key, name, changes)
        if key is not None:
            self._remember(key)
        return key

    async def rotate_key(self, name: str, digest: bytes, key_prefix: str) -> KeyRecord | None:
        key = await self._call(self.backend.rotate_key, name, digest, key_prefix)
        if key is not None:
            self._remember(key)
        return key

    async def delete_key(self, name: str) -> bool:
        deleted = await self._call(self.backend.delete_key, name)
        self._forget(name)
        return deleted

    async def aggregate_usage(
        self,
        since: float,
        until: float,
        group_by: Sequence[str] = ("key",),
        key_name: str | None = None,
    ) -> list[dict[str, Any]]:
        return await self._call(self.backend.aggregate_usage, since, until, group_by, key_name)

    async def usage_summary(self, since: float, until: float, bucket_s: float) -> UsageSummary:
        return await self._call(self.backend.usage_summary, since, until, bucket_s)

    async def spend_by_key(self, windows: Mapping[str, float]) -> dict[str, float]:
        return await self._call(self.backend.spend_by_key, windows)

    async def put_response(self, response: StoredResponse) -> None:
        """Returns once `response` is written, in one transaction with whatever other
        responses were queued meanwhile (see the module docstring)."""
        if self._state is not _State.UP or self._tasks is None:
            raise StoreUnavailable("the store is unavailable")
        if not self._puts and self._now(self.backend.put_responses, [response]) is not BUSY:
            return  # written at once (an in-process store nobody else holds)
        put = _Put(response)
        self._puts.append(put)
        self._puts_queued.set()
        await put.done.wait()
        if put.error is not None:
            raise put.error

    async def get_response(self, id: str, key_name: str) -> StoredResponse | None:
        return await self._call(self.backend.get_response, id, key_name, self._clock(),
                                at_once=True)

    async def delete_response(self, id: str, key_name: str) -> bool:
        return await self._call(self.backend.delete_response, id, key_name)

    async def refresh_keys(self) -> bool:
        """Re-read the keys table if `keys_version` moved; True if the snapshot changed."""
        version = await self._call(self.backend.keys_version)
        if version == self._keys_version:
            return False
        # read after the version: a write in between is caught by the next poll
        keys = await self._call(self.backend.list_keys)
        self._by_name = {key.name: key for key in keys}
        self._by_digest = {key.digest: key for key in keys}
        self._keys_version = version
        return True

    # -- background work -------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Probe, write the ledger, poll keys and clean up until cancelled or `aclose`.

        Start it in the service nursery with `await nursery.start(store.run)`; when that
        returns the first probe has finished (successful or not).
        """
        if self._tasks is not None:
            raise RuntimeError("StoreService.run() is already running")
        if self._state is _State.CLOSED:
            raise RuntimeError("StoreService is closed")
        self._stopped = trio.Event()
        try:
            with trio.CancelScope() as self._tasks:
                if await self.probe():
                    await self._refresh_quietly()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._probe_loop)
                    nursery.start_soon(self._writer)
                    nursery.start_soon(self._response_writer)
                    nursery.start_soon(self._key_poller)
                    nursery.start_soon(self._cleanup_loop)
                    task_status.started()
        finally:
            self._tasks = None
            self._stopped.set()

    async def probe(self) -> bool:
        """Ping the database now (creating its tables on first contact); True and
        healthy if it answered."""
        async with self._probe_lock:
            if self._state is _State.CLOSED:
                return False
            generation = self._generation
            try:
                await self._in_thread(self.backend.ping, deadline=self._background_timeout)
            except StoreUnavailable as exc:
                self.probe_failures += 1
                self._fail(exc, generation)
                return False
            self._mark_up()
            return True

    async def cleanup(self) -> tuple[int, int]:
        """One retention pass now: (ledger rows, stored responses) deleted."""
        now = self._clock()
        limit = self._background_timeout
        rows = await self._call(self.backend.delete_usage_before, now - self._retention_s,
                                deadline=limit)
        responses = await self._call(self.backend.delete_expired_responses, now, deadline=limit)
        return rows, responses

    async def aclose(self) -> None:
        """Stop the background tasks, flush the queued ledger rows, close the backend."""
        if self._state is _State.CLOSED:
            return
        with trio.CancelScope(shield=True):
            if self._tasks is not None:
                self._tasks.cancel()
            await self._stopped.wait()
            self._accepting = False
            rows = self._pending + self._queued
            self._pending = []
            self._queued = []
            with trio.move_on_after(self._close_timeout):
                while rows:
                    batch = rows[: self._batch_size]
                    try:
                        await self._in_thread(functools.partial(self.backend.insert_usage, batch))
                    except StoreUnavailable as exc:
                        self.errors += 1
                        _log.warning("store: %d ledger rows lost at close: %s", len(rows), exc)
                        break
                    self.rows_written += len(batch)
                    del rows[: len(batch)]
            self.rows_dropped += len(rows)
            self._state = _State.CLOSED
            self._went_down.set()
            await trio.to_thread.run_sync(self.backend.close)

    async def _probe_loop(self) -> None:
        delay = self._probe_interval
        while self._state is not _State.CLOSED:
            if self._state is _State.UP:
                delay = self._probe_interval
                await self._went_down.wait()
            elif await self.probe():
                await self._refresh_quietly()
            else:
                await trio.sleep(delay)
                delay = min(delay * 2, self._max_probe_interval)

    async def _writer(self) -> None:
        while True:
            if not self._pending:
                if len(self._queued) < self._batch_size:
                    with trio.move_on_after(self._flush_interval):
                        await self._batch_full.wait()
                self._batch_full = trio.Event()
                if not self._queued:
                    continue
                self._pending = self._queued[: self._batch_size]
                del self._queued[: self._batch_size]
            while self._state is not _State.UP:
                await self._came_up.wait()
            generation = self._generation
            batch = self._pending
            try:
                await self._in_thread(functools.partial(self.backend.insert_usage, batch))
            except StoreUnavailable as exc:  # kept in _pending: written after recovery
                self.errors += 1
                self._fail(exc, generation)
                continue
            self.rows_written += len(batch)
            self._pending = []

    async def _response_writer(self) -> None:
        try:
            while True:
                await self._puts_queued.wait()
                self._puts_queued = trio.Event()
                batch, self._puts = self._puts, []
                error: StoreError | None = None
                try:
                    await self._call(self.backend.put_responses, [p.response for p in batch])
                except StoreError as exc:
                    error = exc
                for put in batch:
                    put.error = error
                    put.done.set()
        finally:  # stopped: nobody waits for a write that will not come
            for put in self._puts:
                put.error = StoreUnavailable("the store is closing")
                put.done.set()
            self._puts = []

    async def _key_poller(self) -> None:
        while True:
            await trio.sleep(self._key_poll_interval)
            if self.healthy:
                await self._refresh_quietly()

    async def _cleanup_loop(self) -> None:
        while True:
            if self.healthy:
                try:
                    await self.cleanup()
                except StoreUnavailable:
                    pass  # marked down; the next pass runs after recovery
            await trio.sleep(self._cleanup_interval)

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh_keys()
        except StoreUnavailable:
            pass  # marked down by the failed call; the probe brings it back

    # -- threads and state ------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any, deadline: float | None = None,
                    at_once: bool = False) -> T:
        """`fn(*args)` in a worker thread; StoreUnavailable at once if the store is down.
        A point read or write (`at_once`) runs on the event loop when the backend says
        that cannot block (`Backend.now`)."""
        if self._state is not _State.UP:
            raise StoreUnavailable("the store is unavailable")
        if at_once:
            result = self._now(fn, *args)
            if result is not BUSY:
                return result
        generation = self._generation
        try:
            return await self._in_thread(
                functools.partial(fn, *args),
                deadline=self._call_timeout if deadline is None else deadline,
            )
        except StoreUnavailable as exc:
            self.errors += 1
            self._fail(exc, generation)
            raise

    def _now(self, fn: Callable[..., T], *args: Any) -> T | Busy:
        """`Backend.now`, with a failure marking the service down as `_call` does."""
        generation = self._generation
        try:
            return self.backend.now(fn, *args)
        except StoreUnavailable as exc:
            self.errors += 1
            self._fail(exc, generation)
            raise

    async def _in_thread(self, fn: Callable[[], T], deadline: float | None = None) -> T:
        """Run `fn` under the limiter. With a `deadline` (seconds) the thread is abandoned
        when it passes (StoreUnavailable; the thread keeps its limiter token until it
        ends); without one it is never abandoned, not even by cancellation."""
        if deadline is None:
            return await trio.to_thread.run_sync(fn, limiter=self._limiter)
        with trio.move_on_after(deadline):
            return await trio.to_thread.run_sync(fn, limiter=self._limiter, abandon_on_cancel=True)
        raise StoreUnavailable(f"the store did not answer within {deadline:g}s")

    def _remember(self, key: KeyRecord) -> None:
        self._forget(key.name)
        self._by_name[key.name] = key
        self._by_digest[key.digest] = key

    def _forget(self, name: str) -> None:
        old = self._by_name.pop(name, None)
        if old is not None:
            self._by_digest.pop(old.digest, None)

    def _fail(self, exc: BaseException, generation: int) -> None:
        """Mark the store down after `exc`, unless it came up again since the call began."""
        if generation != self._generation or self._state in (_State.DOWN, _State.CLOSED):
            return
        self._state = _State.DOWN
        self._came_up = trio.Event()
        self._went_down.set()
        if self._on_error is not None:
            try:
                self._on_error(str(exc) or type(exc).__name__)
            except Exception:
                _log.exception("the store on_error callback failed")

    def _mark_up(self) -> None:
        if self._state in (_State.UP, _State.CLOSED):
            return
        self._state = _State.UP
        self._generation += 1
        self._went_down = trio.Event()
        self._came_up.set()
