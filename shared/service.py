"""Process scaffolding for a service: logging, /metrics, database, topics, graceful stop."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg

from shared import db, metrics
from shared.events import (
    EVENTS_INVALID,
    REPLAY_FAILED,
    Event,
    InvalidEvent,
    ReplayFailed,
    Stage,
    Topic,
)
from shared.kafka import EventProducer, ensure_topics, event_producer
from shared.settings import Settings, get_settings


@dataclass
class ServiceContext:
    name: str
    settings: Settings
    pool: asyncpg.Pool
    producer: EventProducer
    stop: asyncio.Event

    async def fail_replay(
        self,
        replay_id: str,
        stage: Stage,
        reason: str,
        error_type: str,
        uri: str | None = None,
        rule: str | None = None,
    ) -> None:
        """Dead-letter a replay: ``failed`` in Postgres and a ``replay.failed`` event."""
        metrics.ERRORS.labels(self.name, error_type).inc()
        logging.getLogger(self.name).warning("failed %s: %s", replay_id[:12], reason)
        async with self.pool.acquire() as conn:
            await db.set_status(conn, replay_id, stage, "failed", reason)
        await self.producer.send(
            REPLAY_FAILED,
            ReplayFailed(
                replay_id=replay_id,
                stage=stage,
                reason=reason,
                error_type=error_type,
                uri=uri,
                rule=rule,
            ),
        )

    async def refuse_event(self, topic: Topic, event: Event, reason: str) -> None:
        """Dead-letter an event that must not be acted on (``events.invalid``), touching no
        replay: a forged or stray event must not fail the replay it names."""
        metrics.ERRORS.labels(self.name, "refused_event").inc()
        logging.getLogger(self.name).warning("refused a %s event: %s", topic.name, reason)
        raw = event.model_dump_json()
        await self.producer.send(
            EVENTS_INVALID, InvalidEvent(topic=topic.name, reason=reason, raw=raw)
        )


def run_service(
    name: str, body: Callable[[ServiceContext], Awaitable[None]], latency_bound: bool = False
) -> None:
    """Entry point of every service process: ``run_service("parser", run)``.

    ``latency_bound`` services (the live path) keep the objects alive at start-up out of the
    garbage collector's reach and collect the young generation less often, since each frame
    allocates many small objects and collector pauses made their latency tail.
    """
    if latency_bound:
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s"
    )
    settings = get_settings()
    metrics.serve(name, settings.metrics_host, settings.metrics_port(name))
    asyncio.run(_main(name, settings, body))


@asynccontextmanager
async def service_context(name: str, settings: Settings) -> AsyncIterator[ServiceContext]:
    """Database (migrated), topics (created) and a producer: what a service or the CLI needs."""
    pool = await db.connect(settings)
    try:
        await db.migrate(pool)
        await ensure_topics(settings)
        async with event_producer(settings, name) as producer:
            yield ServiceContext(name, settings, pool, producer, asyncio.Event())
    finally:
        await pool.close()


async def _main(
    name: str, settings: Settings, body: Callable[[ServiceContext], Awaitable[None]]
) -> None:
    async with service_context(name, settings) as ctx:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, ctx.stop.set)
        logging.getLogger(name).info("started; metrics on :%d", settings.metrics_port(name))
        await body(ctx)
    logging.getLogger(name).info("stopped")
