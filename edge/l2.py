"""The Redis (L2) cache tier, driven from Trio through worker threads.

Theory of operation
-------------------
redis-py's asyncio client does not run on Trio, so every Redis command is a call of the
synchronous redis-py client (a `redis.Redis` over a `ConnectionPool`, or a `RedisCluster`)
in a worker thread started by `trio.to_thread.run_sync` under this tier's own
`CapacityLimiter`. redis-py keeps what it is good at (pooling, cluster routing, TLS); we
keep what Trio is good at (cancellation, deadlines, structured background work).

The tier is a cache: it may lose data, but it must never fail or noticeably slow a
request. Three rules make that true:

* **Short socket timeouts and no retries.** Connect and read timeouts default to 50 ms,
  and redis-py's own retry loop is switched off (`Retry(NoBackoff(), 0)`), so one command
  costs at most about one timeout even when Redis is SIGSTOPped (the kernel still accepts
  connections; the read is what times out). Behind that, a hard Trio deadline (both
  timeouts plus a little slack) abandons a thread stuck somewhere the socket timeouts do
  not reach, such as a DNS lookup.
* **Skip when down.** The first failure of any operation marks the tier down (and calls
  `on_error` once for that transition); while down, `get` answers None at once without
  touching Redis, `put_nowait` drops, and `call` raises `L2Unavailable`. A background
  probe PINGs every `probe_interval` and marks the tier up again when Redis answers.
  While up, it PINGs every `health_interval` too, so that an idle edge whose Redis died
  says so in /health before a request finds out; only a refused or broken connection
  marks the tier down there (a slow answer is left to requests to judge, so a busy
  machine's stall does not flip an idle tier).
  The tier starts *unknown*, which behaves like down: `run()` probes immediately, so a
  missing Redis never slows the first requests and never blocks start-up.
* **Never queue behind Redis.** `get` takes a worker thread only if one is free right
  now (otherwise it is a miss); writes go through a bounded memory channel that
  `put_nowait` fills without waiting, and a full channel drops the write and counts it.

Every state change happens in the Trio thread (worker threads only return results), so
the state needs no lock. A generation number, bumped each time the tier comes up, keeps
a failure that started before the last recovery from marking the tier down again.
"""

from __future__ import annotations

import enum
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import trio

# redis-py (with what it pulls in: asyncio, cryptography) is about 20 MB of resident
# memory; it is imported when a Redis tier is made, so an edge without L2 never pays it.
if TYPE_CHECKING:
    import redis
    from redis.cluster import RedisCluster

    RedisClient: TypeAlias = redis.Redis | RedisCluster
    """What `RedisTier.call` hands to its function: a plain client or a cluster client."""
else:
    RedisClient = Any

__all__ = ["L2Unavailable", "RedisClient", "RedisTier"]

T = TypeVar("T")

_log = logging.getLogger(__name__)

#: Most writes pipelined in one round trip; more queued writes wait for the next batch.
_MAX_BATCH = 256
#: Added to the socket timeouts to form the hard deadline of a request-path operation.
_DEADLINE_SLACK = 0.05
#: Least hard deadline for background work (writes, probes), which no request waits on.
_BACKGROUND_DEADLINE = 1.0

_Write: TypeAlias = tuple[str, bytes, int]


class L2Unavailable(Exception):
    """Redis is down, failed just now, or had no worker thread free in time."""


class _State(enum.Enum):
    UNKNOWN = "unknown"  # not probed yet; behaves like DOWN but has not been reported
    UP = "up"
    DOWN = "down"
    CLOSED = "closed"


class _Busy(Exception):
    """No worker thread could be had (at once, or before the deadline): not Redis's fault."""


class _Overran(Exception):
    """A worker thread ran past the hard deadline and was abandoned."""


class RedisTier:
    """The shared L2 cache: bytes under `key_prefix + key`, with fail-fast behaviour.

    Args:
        url: `redis://`, `rediss://` (TLS) or, without cluster, `unix://`; query options
            are redis-py's and win over the keyword arguments (`decode_responses` is
            refused: values are bytes).
        cluster: use `RedisCluster` (the URL names one startup node; db must be 0).
        key_prefix: prepended to every key, so several deployments can share a Redis.
        socket_timeout: read/write timeout of one command, seconds.
        connect_timeout: TCP (and TLS) connect timeout, seconds.
        threads: worker threads (and pooled connections) the tier may use at once.
        queue_size: writes that may wait for the background writer before drops begin.
        probe_interval: seconds between PINGs while the tier is down.
        on_error: called with a short reason each time the tier goes down.
        health_interval: seconds between PINGs while the tier is up.

    Counters (plain ints, for metrics): `hits`, `misses` (Redis answered "no such key"),
    `skipped` (a get not sent because the tier was down or no thread was free),
    `errors` (get, write and call operations that failed), `writes` (SETs stored),
    `dropped_writes` (writes refused or lost: channel full, tier down, batch failed),
    `probe_failures` (PINGs that failed; they do not count as `errors`), `health_pings`
    (PINGs sent while up, answered or not).
    """

    def __init__(
        self,
        url: str,
        *,
        cluster: bool = False,
        key_prefix: str = "edge:v1:",
        socket_timeout: float = 0.05,
        connect_timeout: float = 0.05,
        threads: int = 16,
        queue_size: int = 4096,
        probe_interval: float = 0.5,
        on_error: Callable[[str], None] | None = None,
        health_interval: float = 1.0,
    ) -> None:
        if (socket_timeout <= 0 or connect_timeout <= 0 or probe_interval <= 0
                or health_interval <= 0):
            raise ValueError("Redis timeouts and the probe and health intervals must be positive")
        if threads < 1 or queue_size < 1:
            raise ValueError("Redis threads and queue_size must be at least 1")
        import redis
        from redis.connection import parse_url

        # ValueError for a bad scheme or query value, before anything starts
        options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        if options.get("decode_responses"):
            raise ValueError("decode_responses cannot be used for the L2: values are bytes")
        if cluster and "path" in options:
            raise ValueError("Redis Cluster cannot be reached over a unix socket")
        if cluster and options.get("db", 0) != 0:
            raise ValueError("Redis Cluster has only database 0; drop the /db from the URL")

        self._url = url
        self._cluster = cluster
        self._prefix = key_prefix
        self._socket_timeout = socket_timeout
        self._connect_timeout = connect_timeout
        self._threads = threads
        self._probe_interval = probe_interval
        self._health_interval = health_interval
        self._on_error = on_error
        self._failures = (redis.RedisError, OSError, _Overran)
        self._gone = (redis.ConnectionError, ConnectionError)  # refused, reset, closed
        self._deadline = socket_timeout + connect_timeout + _DEADLINE_SLACK
        self._background_deadline = max(_BACKGROUND_DEADLINE, 4 * self._deadline)

        self._limiter = trio.CapacityLimiter(threads)
        self._send, self._receive = trio.open_memory_channel[_Write](queue_size)
        self._probe_lock = trio.Lock()
        self._went_down = trio.Event()
        self._state = _State.UNKNOWN
        self._generation = 0
        self._running = False

        # A plain client does no IO until used, so it is built now; a cluster client
        # fetches the slot map while it is built, so the first probe builds it in a thread.
        self._pool: redis.ConnectionPool | None = None
        self._client: RedisClient | None = None
        if not cluster:
            self._pool = redis.ConnectionPool.from_url(url, **self._client_options())
            self._client = redis.Redis(connection_pool=self._pool)

        self.hits = 0
        self.misses = 0
        self.skipped = 0
        self.errors = 0
        self.writes = 0
        self.dropped_writes = 0
        self.probe_failures = 0
        self.health_pings = 0

    @property
    def healthy(self) -> bool:
        """True once a PING succeeded and no operation has failed since."""
        return self._state is _State.UP

    @property
    def _closed(self) -> bool:
        return self._state is _State.CLOSED

    async def get(self, key: str) -> bytes | None:
        """The value stored under `key`, or None: a miss, a down tier, or a failure.

        Never raises (except Trio cancellation) and never waits for a worker thread.
        """
        client = self._client
        if self._state is not _State.UP or client is None:
            self.skipped += 1
            return None
        generation = self._generation
        try:
            value = await self._in_thread(
                functools.partial(client.get, self._prefix + key),
                wait=False,
                deadline=self._deadline,
            )
        except _Busy:
            self.skipped += 1
            return None
        except Exception as exc:  # a cache must not fail a request, whatever went wrong
            self.errors += 1
            self._fail(exc, generation)
            return None
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        return value.encode() if isinstance(value, str) else value

    def put_nowait(self, key: str, value: bytes, ttl_s: int) -> bool:
        """Queue `SET key value EX ttl_s` for the background writer.

        Returns False, counting a dropped write, when the channel is full, the tier is
        down or `value` is not bytes; a TTL under one second (which `EX` cannot express)
        is refused with False and not counted. Never blocks, never raises.
        """
        if ttl_s < 1:
            return False
        if self._state is not _State.UP or not isinstance(value, bytes):
            self.dropped_writes += 1
            return False
        try:
            self._send.send_nowait((self._prefix + key, value, ttl_s))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.dropped_writes += 1
            return False
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the writer and the health probe until cancelled (or until `aclose`).

        Start it in the service nursery with `await nursery.start(tier.run)`; the first
        probe is already under way when that returns.
        """
        if self._running:
            raise RuntimeError("RedisTier.run() is already running")
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._probe_loop)
                nursery.start_soon(self._writer)
                task_status.started()
        finally:
            self._running = False

    async def probe(self) -> bool:
        """PING Redis now; on success mark the tier healthy and return True.

        `run()` calls this while the tier is down; callers may also use it to wait for
        the tier at start-up when they prefer to.
        """
        async with self._probe_lock:
            if self._closed:
                return False
            generation = self._generation
            try:
                client = await self._in_thread(
                    self._connect_and_ping, wait=True, deadline=self._background_deadline
                )
            except Exception as exc:
                self.probe_failures += 1
                self._fail(exc, generation)
                return False
            if self._closed:
                # closed while the PING ran: the client was just built for nothing
                await self._close_clients(client, None)
                return False
            self._client = client
            self._mark_up()
            return True

    async def call(self, fn: Callable[[RedisClient], T]) -> T:
        """Run `fn(client)` in a worker thread and return its result.

        For operations beyond get/put (the rate limiter's Lua script). `fn` must give
        back any connection it takes (no PubSub left open).

        Raises:
            L2Unavailable: the tier is down, no thread was free before the deadline, or
                the operation failed with a Redis or socket error (the tier is then
                marked down; the original error is the `__cause__`).
        """
        client = self._client
        if self._state is not _State.UP or client is None:
            raise L2Unavailable("Redis is marked down")
        generation = self._generation
        try:
            return await self._in_thread(
                functools.partial(fn, client), wait=True, deadline=self._deadline
            )
        except _Busy as exc:
            raise L2Unavailable(str(exc)) from exc
        except self._failures as exc:
            self.errors += 1
            self._fail(exc, generation)
            raise L2Unavailable(_reason(exc)) from exc

    async def aclose(self) -> None:
        """Stop using Redis and close the connection pool(s); safe to call twice."""
        self._state = _State.CLOSED
        self._went_down.set()  # let the probe loop see CLOSED and end
        self._send.close()  # the writer drains what is left (dropping it) and ends
        client, pool = self._client, self._pool
        self._client = self._pool = None
        await self._close_clients(client, pool)

    # -- background work ---------------------------------------------------------

    async def _probe_loop(self) -> None:
        while self._state is not _State.CLOSED:
            if self._state is _State.UP:
                with trio.move_on_after(self._health_interval):
                    await self._went_down.wait()
                if self._state is _State.UP:
                    await self._check_up()
            elif not await self.probe():
                await trio.sleep(self._probe_interval)

    async def _check_up(self) -> None:
        """PING while up: a refused or broken connection marks the tier down."""
        client = self._client
        if client is None:
            return
        generation = self._generation
        try:
            await self._in_thread(client.ping, wait=False, deadline=self._background_deadline)
        except (_Busy, *self._failures) as exc:
            # busy threads or a slow answer are left to requests to judge
            if isinstance(exc, self._gone):
                self.probe_failures += 1
                self._fail(exc, generation)
        finally:
            self.health_pings += 1

    async def _writer(self) -> None:
        async for first in self._receive:
            batch = [first]
            while len(batch) < _MAX_BATCH:
                try:
                    batch.append(self._receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            await self._write_batch(batch)

    async def _write_batch(self, batch: list[_Write]) -> None:
        client = self._client
        if self._state is not _State.UP or client is None:
            self.dropped_writes += len(batch)
            return
        generation = self._generation
        try:
            await self._in_thread(
                functools.partial(_write_sync, client, batch),
                wait=True,
                deadline=self._background_deadline,
            )
        except _Busy:
            self.dropped_writes += len(batch)
            return
        except Exception as exc:  # the writer must outlive any failure
            self.errors += 1
            self.dropped_writes += len(batch)
            self._fail(exc, generation)
            return
        self.writes += len(batch)

    # -- threads and state ---------------------------------------------------------

    async def _in_thread(self, fn: Callable[[], T], *, wait: bool, deadline: float) -> T:
        """Run `fn` in a worker thread under the limiter, abandoning it after `deadline`.

        With `wait=False` a full limiter raises `_Busy` at once. Checking
        `available_tokens` and then acquiring is race-free: nothing between the two
        yields to another task, and a free token means acquisition does not park.
        """
        if not wait and self._limiter.available_tokens < 1:
            raise _Busy("no Redis worker thread was free")
        started = [False]

        def job() -> T:
            started[0] = True
            return fn()

        with trio.move_on_after(deadline):
            return await trio.to_thread.run_sync(job, limiter=self._limiter, abandon_on_cancel=True)
        if started[0]:
            raise _Overran(f"Redis did not answer within {deadline:.3f}s")
        raise _Busy(f"no Redis worker thread was free within {deadline:.3f}s")

    def _connect_and_ping(self) -> RedisClient:
        """(Worker thread.) The client, built first for a cluster; raises unless PING works."""
        client = self._client
        if client is None:
            if not self._cluster:
                raise L2Unavailable("the Redis tier is closed")
            from redis.cluster import RedisCluster

            client = RedisCluster.from_url(self._url, **self._client_options())
        try:
            client.ping()
        except BaseException:
            if client is not self._client:
                client.close()
            raise
        return client

    def _client_options(self) -> dict[str, Any]:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return {
            "socket_timeout": self._socket_timeout,
            "socket_connect_timeout": self._connect_timeout,
            "retry": Retry(NoBackoff(), 0),  # our probe is the retry; never multiply timeouts
            "max_connections": self._threads,  # the limiter caps use; this caps the pool
        }

    async def _close_clients(
        self, client: RedisClient | None, pool: redis.ConnectionPool | None
    ) -> None:
        def close() -> None:
            if client is not None:
                client.close()
            if pool is not None:
                pool.disconnect()

        with trio.CancelScope(shield=True):  # closing must finish even during cancellation
            await trio.to_thread.run_sync(close)

    def _fail(self, exc: BaseException, generation: int) -> None:
        """Mark the tier down after `exc`, unless it came up again since the operation began."""
        if generation != self._generation or self._state in (_State.DOWN, _State.CLOSED):
            return
        self._state = _State.DOWN
        self._went_down.set()
        if self._on_error is not None:
            try:
                self._on_error(_reason(exc))
            except Exception:
                _log.exception("the Redis on_error callback failed")

    def _mark_up(self) -> None:
        if self._state is _State.CLOSED or self._state is _State.UP:
            return
        self._state = _State.UP
        self._generation += 1
        self._went_down = trio.Event()


def _write_sync(client: RedisClient, batch: list[_Write]) -> None:
    """(Worker thread.) Store a batch: one SET alone, several in one pipelined round trip."""
    if len(batch) == 1:
        key, value, ttl_s = batch[0]
        client.set(key, value, ex=ttl_s)
        return
    pipe = client.pipeline(transaction=False)
    for key, value, ttl_s in batch:
        pipe.set(key, value, ex=ttl_s)
    pipe.execute()


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
