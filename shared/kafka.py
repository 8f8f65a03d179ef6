"""Kafka on aiokafka: topic setup, a typed producer, and the consume loop every service runs.

Delivery is at-least-once: offsets are committed only after the handler returned, i.e. after
its results are durable. Handlers are idempotent (keyed by content hash and model id), so a
redelivery after a crash changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import IllegalStateError, TopicAlreadyExistsError
from aiokafka.structs import RecordMetadata

from shared import metrics
from shared.events import (
    ALL_TOPICS,
    EVENTS_INVALID,
    Event,
    EventDecodeError,
    InvalidEvent,
    Topic,
    decode,
    encode,
)
from shared.settings import Settings

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)
HANDLER_ATTEMPTS = 3
# A compacted topic is read whole on recovery: small segments, cleaned early, so that little
# more than the latest record per key is left to read.
COMPACTED_CONFIGS = {
    "cleanup.policy": "compact,delete",
    "segment.bytes": str(8 * 2**20),
    "segment.ms": str(60_000),
    "min.cleanable.dirty.ratio": "0.1",
    "max.message.bytes": str(4 * 2**20),
}


async def ensure_topics(settings: Settings, topics: tuple[Topic, ...] = ALL_TOPICS) -> list[str]:
    """Create missing topics with their partitions and retention; return the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t.name not in existing]
        for topic in missing:
            # One at a time: another service starting beside us may create some first.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [
                        NewTopic(
                            name=topic.name,
                            num_partitions=topic.partitions,
                            replication_factor=1,
                            topic_configs={
                                "retention.ms": str(topic.retention_ms),
                                **(COMPACTED_CONFIGS if topic.compacted else {}),
                            },
                        )
                    ]
                )
        return [t.name for t in missing]
    finally:
        await admin.close()


class EventProducer:
    def __init__(self, producer: AIOKafkaProducer, service: str) -> None:
        self._producer = producer
        self._service = service

    async def send(self, topic: Topic, event: Event) -> None:
        await self._producer.send_and_wait(topic.name, encode(event), key=event.key())
        metrics.EVENTS_OUT.labels(self._service, topic.name).inc()

    async def enqueue(self, topic: Topic, event: Event) -> asyncio.Future[RecordMetadata]:
        """Queue the event without waiting for the broker (the live path: the next frame need
        not wait for this one's ack); the future resolves on the ack. Order is kept."""
        future = await self._producer.send(topic.name, encode(event), key=event.key())
        counter = metrics.EVENTS_OUT.labels(self._service, topic.name)
        future.add_done_callback(
            lambda done: counter.inc() if not done.cancelled() and not done.exception() else None
        )
        return future


@asynccontextmanager
async def event_producer(
    settings: Settings, service: str, *, low_latency: bool = False
) -> AsyncIterator[EventProducer]:
    """``low_latency`` (the live path): the leader's ack only, for frames and live scores that
    are superseded 30 times a second anyway, and what arrives within ``live_linger_ms`` sent
    together (fewer requests for the producer and the broker at many matches)."""
    if low_latency:
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            acks=1,
            linger_ms=settings.live_linger_ms,
        )
    else:
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True
        )
    await producer.start()
    try:
        yield EventProducer(producer, service)
    finally:
        await producer.stop()


async def consume(
    settings: Settings,
    service: str,
    topic: Topic,
    event_type: type[E],
    handler: Callable[[E], Awaitable[None]],
    producer: EventProducer,
    *,
    batch_size: int = 1,
    before_batch: Callable[[], Awaitable[None]] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run ``handler`` on every event of ``topic``, up to ``batch_size`` at once, until ``stop``.

    A message that is not a valid ``event_type`` goes to ``events.invalid``; so does one whose
    handler keeps failing after retries. Neither stops the loop.
    """
    consumer = AIOKafkaConsumer(
        topic.name,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.consumer_group(service),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_interval_ms=30 * 60 * 1000,
    )
    await consumer.start()
    stop = stop or asyncio.Event()
    try:
        while not stop.is_set():
            if before_batch is not None:
                await before_batch()
            batches = await consumer.getmany(timeout_ms=500, max_records=batch_size)
            await record_lag(consumer, service)
            records = [record for partition in batches.values() for record in partition]
            if not records:
                continue
            await asyncio.gather(
                *(_handle(record, service, event_type, handler, producer) for record in records)
            )
            await consumer.commit()
    finally:
        await consumer.stop()


async def record_lag(consumer: AIOKafkaConsumer, service: str) -> None:
    """Set the lag gauge of each assigned partition: its end minus the consumer's position."""
    for tp in consumer.assignment():
        try:
            highwater = consumer.highwater(tp)
            if highwater is None:  # nothing fetched from this partition yet
                continue
            position = await consumer.position(tp)
        except (AssertionError, IllegalStateError):  # revoked by a rebalance meanwhile
            continue
        lag = max(highwater - position, 0)
        metrics.CONSUMER_LAG.labels(service, tp.topic, str(tp.partition)).set(lag)


async def dead_letter(
    producer: EventProducer, service: str, record: ConsumerRecord, kind: str, reason: str
) -> None:
    """Send a message that cannot be handled to ``events.invalid`` (for loops other than
    :func:`consume`, which does this itself)."""
    await _dead_letter(producer, service, record, kind, reason)


async def _handle(
    record: ConsumerRecord,
    service: str,
    event_type: type[E],
    handler: Callable[[E], Awaitable[None]],
    producer: EventProducer,
) -> None:
    metrics.EVENTS_IN.labels(service, record.topic).inc()
    try:
        event = decode(event_type, record.value)
    except EventDecodeError as error:
        await _dead_letter(producer, service, record, "invalid_event", str(error))
        return
    for attempt in range(1, HANDLER_ATTEMPTS + 1):
        try:
            with metrics.PROCESSING_SECONDS.labels(service).time():
                await handler(event)
            return
        except Exception as error:
            log.exception("%s: handler failed (attempt %d/%d)", service, attempt, HANDLER_ATTEMPTS)
            if attempt == HANDLER_ATTEMPTS:
                reason = f"{type(error).__name__}: {error}"
                await _dead_letter(producer, service, record, "handler_failed", reason)
                return
            await asyncio.sleep(0.5 * 2**attempt)


async def _dead_letter(
    producer: EventProducer, service: str, record: ConsumerRecord, kind: str, reason: str
) -> None:
    metrics.ERRORS.labels(service, kind).inc()
    raw = record.value.decode("utf-8", errors="replace") if record.value else ""
    await producer.send(EVENTS_INVALID, InvalidEvent(topic=record.topic, reason=reason, raw=raw))
