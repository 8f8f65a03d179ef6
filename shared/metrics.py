"""Prometheus metrics shared by all services; each service serves them on its own /metrics port."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

EVENTS_IN = Counter("rlimpact_events_in_total", "Events consumed", ["service", "topic"])
EVENTS_OUT = Counter("rlimpact_events_out_total", "Events produced", ["service", "topic"])
ERRORS = Counter("rlimpact_errors_total", "Failures by reason", ["service", "reason"])
INGEST_DUPLICATES = Counter(
    "rlimpact_ingest_duplicates_total", "Files whose content was already known"
)
INGEST_FILES = Counter(
    "rlimpact_ingest_files_total", "Files dealt with, by source and outcome", ["source", "outcome"]
)
REDRIVES = Counter(
    "rlimpact_redrives_total", "Replays driven on again by recovery", ["service", "topic"]
)
PROCESSING_SECONDS = Histogram(
    "rlimpact_processing_seconds",
    "Time to handle one event",
    ["service"],
    buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
ACTIVE_MODEL = Gauge("rlimpact_active_model_id", "Id of the model in use (0 = none)", ["service"])
UP = Gauge("rlimpact_up", "1 while the service runs", ["service"])
WORKER_RESTARTS = Counter(
    "rlimpact_worker_restarts_total",
    "Worker processes replaced after a timeout or a crash",
    ["service"],
)
CONSUMER_LAG = Gauge(
    "rlimpact_consumer_lag",
    "Messages between the consumer's position and the end of the partition",
    ["service", "topic", "partition"],
)

# Live matches (bridge and live services)
LIVE_MATCHES = Gauge("rlimpact_live_matches", "Live matches being followed", ["service"])
LIVE_LATENCY = Histogram(
    "rlimpact_live_latency_seconds",
    "From the bridge's receipt of a live frame to the scores.live update that covers it",
    ["service"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
LIVE_FRAMES_SKIPPED = Counter(
    "rlimpact_live_frames_skipped_total",
    "Live updates not forwarded or not scored, by reason (goal replay, no locations, ...)",
    ["service", "reason"],
)
FEED_CONNECTED = Gauge(
    "rlimpact_bridge_feed_connected", "1 while the bridge is connected to the feed", ["feed"]
)
FEED_RECONNECTS = Counter(
    "rlimpact_bridge_reconnects_total", "Connection attempts after a lost or refused feed", ["feed"]
)
STREAM_CLIENTS = Gauge(
    "rlimpact_stream_clients", "Browsers and overlays on the score stream", ["service"]
)


def serve(service: str, host: str, port: int) -> None:
    start_http_server(port, addr=host)
    UP.labels(service).set(1)
    # Exported from the start (at 0) by every service, so dashboards and alerts see the series.
    WORKER_RESTARTS.labels(service)
