"""Per-request bookkeeping in one place: what a request cost, used and ended as.

Every answer path (a JSON miss, a relayed stream however it ended, a cache hit, an
error) reports here, and only here, to the metrics (requests by status class, errors by
kind, upstream latency, tokens, cost, cost saved), the request's log fields and the
client key's token limit. The breaker hears each attempt's verdict from
`failover.Attempts` (a stream's via `Attempts.settle`, once its end is known).

Charging runs while the request may be being cancelled (the client hung up): it is
shielded from that, but bounded, so a slow limiter store cannot hold a task for long.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import trio

from . import schema
from .metrics import Metrics
from .routing import Deployment
from .store.base import UsageRow

if TYPE_CHECKING:
    from .completion import Call
    from .errors import EdgeError
    from .fastpath import Entry
    from .keypool import Key

BYTES_PER_TOKEN = 4
BOOKKEEPING_S = 5.0


class Books:
    """The bookkeeping of every request of one app; see the module docstring."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def ended(self, endpoint: str, status: int, error: EdgeError | None = None) -> None:
        """A request's answer was sent (or its stream ended) with `status`."""
        m = self.metrics
        m.child(m.requests, endpoint, f"{status // 100}xx").inc()
        if error is not None:
            m.child(m.errors, error.kind).inc()

    def served_hit(self, call: Call, entry: Entry) -> None:
        m = self.metrics
        m.child(m.cost_saved, entry.provider, m.model_label(entry.model)).inc(entry.cost_usd)
        call.saved = entry.cost_usd
        self.ended(call.req.endpoint, 200)

    def upstream_latency(self, dep: Deployment, began: float) -> None:
        """An attempt's answer headers arrived `began` (perf_counter) after it started."""
        m = self.metrics
        m.child(m.provider_latency, dep.provider.name, m.model_label(dep.model)).observe(
            time.perf_counter() - began)

    def answered(self, call: Call, dep: Deployment, usage: tuple[int, int],
                 estimated: bool = False) -> float:
        """Tokens and cost of one upstream answer, into the metrics; returns the cost."""
        prompt, completion = usage
        cost = call.edge.prices.cost(dep.model, prompt, completion)
        call.upstream_model, call.tokens, call.cost = dep.model, usage, cost
        m = self.metrics
        m.usage(dep.provider.name, dep.model, prompt, completion, cost)
        if estimated:
            m.child(m.tokens_estimated, dep.provider.name, m.model_label(dep.model)).inc(
                prompt + completion)
            call.req.usage = "estimated"
        else:
            call.req.usage = "upstream"
        return cost

    async def charge(self, call: Call, usage: tuple[int, int], cost: float,
                     dep: Deployment | None = None, upstream_key: Key | None = None) -> None:
        """Tokens count against the client key's tpm, and the cost against its budget, once
        the answer is known (or cut); the tokens also against the tpm of the provider's key
        that was sent (`upstream_key`, of `dep`'s pool)."""
        edge = call.edge
        key = call.req.key
        if key.budget_nano is not None or edge.limiter.limited(call.req.tenant):
            with shielded():
                await edge.charge_key(key, usage[0] + usage[1], cost)
        if upstream_key is not None and upstream_key.tpm is not None and dep is not None:
            with shielded():
                await dep.provider.keys.charge(upstream_key, usage[0] + usage[1])

    def ledger(self, call: Call, status: int) -> None:
        """The request's row in the usage ledger (SPEC §7), queued for the store's writer."""
        req = call.req
        prompt, completion = call.tokens
        cache = req.cache or call.policy.header
        hit = cache.startswith(b"hit")
        call.edge.record_usage(UsageRow(
            time=time.time(), request_id=req.request_id.decode(), key_name=req.tenant,
            endpoint=req.endpoint, model=call.model, provider=None if hit else req.provider,
            upstream_model=call.upstream_model,
            cache=cache.decode(), status=status,
            prompt_tokens=prompt, completion_tokens=completion, cost_usd=call.cost,
            saved_usd=call.saved, latency_ms=round(req.elapsed_ms(), 3)))

    async def settle_stream(self, call: Call, dep: Deployment, assembler: Any,
                            key: Key | None = None) -> float:
        """Tokens and cost of a stream however it ended (whole, failed, cut by the client):
        the upstream's counts where it sent them, else an estimate of what was relayed
        (`estimated_tokens`), counted as such. Returns the cost."""
        prompt, completion = assembler.reported_usage()
        estimated = prompt is None or completion is None
        if prompt is None:
            body = call.body
            # Anthropic's system prompt; Responses' instructions and input items (a list
            # once the door expanded it), whose content has the messages' shape
            items = body.get("input")
            more = [{"content": body.get("system")}, {"content": body.get("instructions")},
                    *(items if isinstance(items, list) else ())]
            chars = schema.prompt_chars(body) + schema.prompt_chars({"messages": more})
            prompt = estimated_tokens(chars)
        if completion is None:
            completion = estimated_tokens(assembler.text_bytes)
        cost = self.answered(call, dep, (prompt, completion), estimated)
        await self.charge(call, (prompt, completion), cost, dep, key)
        return cost


def estimated_tokens(size: int) -> int:
    """Tokens in `size` characters or bytes of text: ~4 a token, the usual rule of thumb for
    English with OpenAI's and Anthropic's tokenizers (an estimate, and counted as one)."""
    return -(-size // BYTES_PER_TOKEN)


def shielded() -> trio.CancelScope:
    """A scope for accounting that must run while its request is being cancelled (the
    client hung up), shielded from that but bounded, so it can never hold a task long."""
    return trio.CancelScope(deadline=trio.current_time() + BOOKKEEPING_S, shield=True)
