"""Operations endpoints: ``/health`` and Prometheus ``/metrics``."""

from __future__ import annotations

from federation_presence.api.app import Request, Response, Router, json_response
from federation_presence.metrics import Metrics

PROMETHEUS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


def add_ops_routes(router: Router, metrics: Metrics) -> None:
    async def health(request: Request) -> Response:
        return json_response(200, {"status": "ok"})

    async def render_metrics(request: Request) -> Response:
        return Response(200, metrics.render(), ((b"content-type", PROMETHEUS_CONTENT_TYPE),))

    router.add("GET", "/health", health)
    router.add("GET", "/metrics", render_metrics)
