"""The operator's endpoints: /v1/models, /health, /health/live, /health/ready, /metrics.

None of them touches an upstream; each answers from what the service knows now.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson

from ._version import __version__
from .auth import model_allowed
from .exchange import Request, send_json
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import Metrics
from .service import Edge


class Ops:
    """The endpoints above. `current` is the service or None (starting, stopped);
    `serving` is the service or raises 503 (`EdgeApp.service`)."""

    def __init__(self, current: Callable[[], Edge | None], serving: Callable[[], Edge],
                 metrics: Metrics) -> None:
        self.current = current
        self.serving = serving
        self.metrics = metrics

    async def models(self, req: Request) -> None:
        edge = self.serving()
        policy = req.key
        data = [{"id": name, "object": "model", "created": 0, "owned_by": owner}
                for name, owner in edge.router.model_list()
                if policy.models is None or model_allowed(policy, name, edge.config.models)]
        await send_json(req, 200, orjson.dumps({"object": "list", "data": data}))

    async def health(self, req: Request) -> None:
        edge = self.current()
        providers = {}
        usable = False
        if edge is not None:
            for name, provider in edge.providers.items():
                healthy = edge.router.healthy(name)
                usable = usable or healthy
                keys = provider.keys
                providers[name] = {"configured": True, "healthy": healthy,
                                   "keys": {"total": len(keys.keys),
                                            "available": keys.available()}}
        status = "healthy" if usable and edge is not None and not edge.draining else (
            "draining" if edge is not None and edge.draining else "unhealthy")
        body = {
            "status": status,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "version": __version__,
            "cache": {"l1_healthy": edge is not None and edge.cache.l1_healthy,
                      "l2_healthy": edge is not None and edge.cache.l2_healthy,
                      "l2_configured": edge is not None and edge.cache.l2_configured},
            "providers": providers,
            # memory:// is the default, not a store anyone configured
            "store": {"configured": edge is not None
                      and not edge.config.store.url.startswith("memory:"),
                      "healthy": edge is not None and edge.store.healthy},
        }
        await send_json(req, 200 if status == "healthy" else 503, orjson.dumps(body))

    async def live(self, req: Request) -> None:
        await send_json(req, 200, b'{"status":"alive"}')

    async def ready(self, req: Request) -> None:
        edge = self.current()
        if edge is not None and edge.ready and not edge.draining:
            await send_json(req, 200, b'{"status":"ready"}')
        else:
            state = "draining" if edge is not None and edge.draining else "starting"
            await send_json(req, 503, orjson.dumps({"status": state}))

    async def metrics_endpoint(self, req: Request) -> None:
        body = self.metrics.render()
        await req.send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", METRICS_CONTENT_TYPE.encode()), (b"x-request-id", req.request_id)]})
        await req.send({"type": "http.response.body", "body": body})
