"""Prometheus metrics shared by all services; each service serves them on its own /metrics port."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

EVENTS_IN = Counter("rlimpact_events_in_total", "Events consumed", ["service", "topic"])
EVENTS_OUT = Counter("rlimpact_events_out_total", "Events produced", ["service", "topic"])
ERRORS = Counter("rlimpact_errors_total", "Failures by reason", ["service", "reason"])
PROCESSING_SECONDS = Histogram(
    "rlimpact_processing_seconds",
    "Time to handle one event",
    ["service"],
    buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
ACTIVE_MODEL = Gauge("rlimpact_active_model_id", "Id of the model in use (0 = none)", ["service"])
UP = Gauge("rlimpact_up", "1 while the service runs", ["service"])


def serve(service: str, host: str, port: int) -> None:
    start_http_server(port, addr=host)
    UP.labels(service).set(1)
