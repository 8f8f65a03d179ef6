"""Process scaffolding for a service: logging, /metrics, database, topics, graceful stop.

Start-up waits for its dependencies: a Postgres or Kafka that is not up yet (or restarting) is
retried with backoff (:mod:`shared.retry`), so no service exits because one is down.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

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
from shared.kafka import EventProducer, FailReplay, ensure_topics, event_producer
from shared.retry import RateLimit, RetryPolicy, retry_transient
from shared.settings import Settings, get_settings

T = TypeVar("T")
log = logging.getLogger(__name__)
CHATTY_LIBRARIES = ("aiokafka", "asyncpg")
LIBRARY_LOG_WINDOW_SECONDS = 30.0
LIBRARY_LOG_BURST = 3


@dataclass
class ServiceContext:
    name: str
    settings: Settings
    database: asyncpg.Pool | None  # None: a service that runs without Postgres (the bridge)
    producer: EventProducer
    stop: asyncio.Event
    policy: RetryPolicy | None = None  # how long to wait for a dependency; None: as long as down

    @property
    def pool(self) -> asyncpg.Pool:
        """The Postgres pool (a service started with ``database=False`` has none)."""
        if self.database is None:
            raise RuntimeError(f"{self.name} runs without the database")
        return self.database

    async def fail_replay(
        self,
        replay_id: str,
        stage: Stage,
        reason: str,
        error_type: str,
        uri: str | None = None,
        rule: str | None = None,
    ) -> None:
        """Dead-letter a replay: ``failed`` in Postgres and a ``replay.failed`` event; both wait
        for their dependency if it is down."""
        metrics.ERRORS.labels(self.name, error_type).inc()
        logging.getLogger(self.name).warning("failed %s: %s", replay_id[:12], reason)

        async def record() -> None:
            async with self.pool.acquire() as conn:
                await db.set_status(conn, replay_id, stage, "failed", reason)

        await self.retry(record, f"marking {replay_id[:12]} failed")
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

    def replay_failer(self, stage: Stage) -> FailReplay:
        """For :func:`shared.kafka.consume`: what marks a replay of this stage failed."""

        async def fail(replay_id: str, reason: str, error_type: str) -> None:
            await self.fail_replay(replay_id, stage, reason, error_type)

        return fail

    async def retry(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        """``operation()``, waiting with backoff while a dependency is down."""
        policy = self.policy or RetryPolicy.of(self.settings)
        return await retry_transient(operation, f"{self.name}: {what}", policy, log, self.stop)


def run_service(
    name: str,
    body: Callable[[ServiceContext], Awaitable[None]],
    latency_bound: bool = False,
    *,
    database: bool = True,
    low_latency: bool = False,
) -> None:
    """Entry point of every service process: ``run_service("parser", run)``.

    ``latency_bound`` services (the live path) keep the objects alive at start-up out of the
    garbage collector's reach and collect the young generation less often, since each frame
    allocates many small objects and collector pauses made their latency tail.
    ``database`` and ``low_latency``: as in :func:`service_context`.
    """
    if latency_bound:
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
    configure_logging(name)
    settings = get_settings()
    metrics.serve(name, settings.metrics_host, settings.metrics_port(name))
    asyncio.run(_main(name, settings, body, database=database, low_latency=low_latency))


def configure_logging(name: str) -> None:
    """INFO for the services' own loggers. The libraries' own retry chatter while a broker
    or database is down (a line, or a traceback, per reconnect attempt of every client) only
    from warnings up, one line each, a few per minute: the services log each outage
    themselves (:class:`shared.retry.OutageLog`)."""
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s"
    )
    for library in CHATTY_LIBRARIES:
        logging.getLogger(library).setLevel(logging.WARNING)
    limit = RateLimit(CHATTY_LIBRARIES, LIBRARY_LOG_WINDOW_SECONDS, LIBRARY_LOG_BURST)
    for handler in logging.getLogger().handlers:  # a logger's own filters skip its children
        handler.addFilter(limit)


@asynccontextmanager
async def service_context(
    name: str,
    settings: Settings,
    *,
    wait: bool = False,
    database: bool = True,
    low_latency: bool = False,
) -> AsyncIterator[ServiceContext]:
    """Database (migrated), topics (created) and a producer: what a service or the CLI needs.
    With ``wait`` (a service), each waits with backoff until its dependency is up, and sends
    wait while Kafka is away; without (a command), a dependency that is down is an error.
    ``database=False``: no Postgres at all (a service that never uses it); ``low_latency``: the
    producer of the live path (see :func:`shared.kafka.event_producer`)."""
    policy = RetryPolicy.of(settings) if wait else RetryPolicy(attempts=1)
    stop = asyncio.Event()

    async def wait_for(operation: Callable[[], Awaitable[T]], what: str) -> T:
        return await retry_transient(operation, f"{name}: {what}", policy, log, stop)

    pool = (
        await wait_for(lambda: db.connect(settings), "connecting to Postgres") if database else None
    )
    try:
        if pool is not None:
            await wait_for(partial(db.migrate, pool), "migrating Postgres")
        await wait_for(lambda: ensure_topics(settings), "creating the Kafka topics")
        async with event_producer(
            settings, name, low_latency=low_latency, stop=stop, policy=policy
        ) as producer:
            yield ServiceContext(name, settings, pool, producer, stop, policy)
    finally:
        if pool is not None:
            await pool.close()


async def _main(
    name: str,
    settings: Settings,
    body: Callable[[ServiceContext], Awaitable[None]],
    *,
    database: bool,
    low_latency: bool,
) -> None:
    async with service_context(
        name, settings, wait=True, database=database, low_latency=low_latency
    ) as ctx:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, ctx.stop.set)
        logging.getLogger(name).info("started; metrics on :%d", settings.metrics_port(name))
        await body(ctx)
    logging.getLogger(name).info("stopped")
