"""What edge adds to every answer it sends: the x-edge-* headers and the "metadata" field.

Built here only, for hits, misses and streams alike (SPEC §4), so every answer says the
same things in the same spelling.
"""

from __future__ import annotations

import orjson

SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def edge_headers(cache: bytes, provider: str, latency_ms: float,
                 cost: bytes | None = None) -> list[tuple[bytes, bytes]]:
    """x-edge-cache, -provider, -latency-ms and, for JSON answers, -cost-usd (`cost`)."""
    headers = [(b"x-edge-cache", cache), (b"x-edge-provider", provider.encode()),
               (b"x-edge-latency-ms", f"{latency_ms:.3f}".encode())]
    if cost is not None:
        headers.append((b"x-edge-cost-usd", cost))
    return headers


def cost_header(cost: float) -> bytes:
    """A miss's cost as x-edge-cost-usd says it (a hit's is b"0")."""
    return f"{cost:.8f}".encode()


def with_metadata(body: bytes, *, provider: str, tier: str | None, latency_ms: float,
                  cost: float) -> bytes:
    """`body` (a compact JSON object, as orjson writes it) with edge's "metadata" field last."""
    meta = orjson.dumps({"provider": provider, "cached": tier is not None, "cache_tier": tier,
                         "latency_ms": latency_ms, "cost_usd": cost})
    comma = b"," if body[-2:] != b"{}" else b""  # only the empty object ends in "{}"
    return b"".join((body[:-1], comma, b'"metadata":', meta, b"}"))
