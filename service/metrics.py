"""Every Prometheus metric of the service, on one registry per app (so tests can run several apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    2.0,
    5.0,
    10.0,
)
CONVERSION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.predict_latency = Histogram(
            "reparam_predict_latency_seconds",
            "End-to-end /predict latency (decode + backend + response)",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predict_backend_latency = Histogram(
            "reparam_predict_backend_latency_seconds",
            "Inference backend part of /predict (queue + inference)",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.conversion_duration = Histogram(
            "reparam_conversion_stage_seconds",
            "Conversion pipeline duration by stage",
            ["stage"],
            buckets=CONVERSION_BUCKETS,
            registry=r,
        )
        self.conversions = Counter(
            "reparam_conversions_total",
            "Conversions by outcome",
            ["outcome"],
            registry=r,
        )
        self.requests = Counter(
            "reparam_http_requests_total",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.models_registered = Gauge(
            "reparam_model_versions_registered",
            "Model versions registered with the backend",
            registry=r,
        )


class CountRequests:
    """ASGI middleware counting requests by route template, method and status
    (plain ASGI: Starlette's ``BaseHTTPMiddleware`` costs a task group and streams per request)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
