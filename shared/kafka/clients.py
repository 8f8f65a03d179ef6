"""Kafka clients with the services' settings: a started consumer or producer (waiting for
Kafka while it is down) and the typed event producer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    OutOfOrderSequenceNumber,
    UnknownProducerId,
)
from aiokafka.structs import RecordMetadata

from shared import metrics
from shared.events import Event, Topic, encode
from shared.retry import RetryPolicy, retry_transient
from shared.settings import Settings

log = logging.getLogger(__package__)

# Every client of the services: while the broker is down, reconnect and retry at most every
# second or so (aiokafka's defaults of 50-100 ms make every client spin and log).
QUIET_CLIENT: dict[str, Any] = {"retry_backoff_ms": 1000}

# An idempotent producer the broker no longer takes records from: after a broker restart the
# broker can refuse its sequence numbers (OutOfOrderSequenceNumber), and aiokafka's sender then
# stops for good, failing every later send (aiokafka issue 1017). Only a new producer (a new
# producer id) sends again.
PRODUCER_OUT_OF_STEP = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
)


class ProducerReplaced(ConnectionError):
    """The send met a producer out of step with the broker, now replaced: send again (a
    transient error, so the retry loop does)."""


class EventProducer:
    """Sends events; a send that fails because Kafka is down is retried until it succeeds (or
    the service stops), never turned into a lost or dead-lettered message; a producer out of
    step with the broker is replaced by ``new_producer``'s."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        service: str,
        policy: RetryPolicy | None = None,
        stop: asyncio.Event | None = None,
        *,
        new_producer: Callable[[], Awaitable[AIOKafkaProducer]],
    ) -> None:
        self._producer = producer
        self._service = service
        self._policy = policy or RetryPolicy()
        self._stop = stop
        self._new_producer = new_producer
        self._replacing = asyncio.Lock()

    async def send(self, topic: Topic, event: Event) -> None:
        value, key = encode(event), event.key()
        await retry_transient(
            lambda: self._send_once(topic.name, value, key),
            f"{self._service}: sending to {topic.name}",
            self._policy,
            log,
            self._stop,
        )
        metrics.EVENTS_OUT.labels(self._service, topic.name).inc()

    async def _send_once(self, topic: str, value: bytes, key: bytes | None) -> None:
        producer = self._producer
        try:
            await producer.send_and_wait(topic, value, key=key)
        except PRODUCER_OUT_OF_STEP as error:
            await self._replace(producer, error)
            raise ProducerReplaced(f"a new Kafka producer after {error!r}") from error

    async def _replace(self, broken: AIOKafkaProducer, error: Exception) -> None:
        async with self._replacing:
            if self._producer is not broken:
                return  # a concurrent send replaced it already
            log.warning("%s: Kafka producer out of step (%r): a new one", self._service, error)
            with contextlib.suppress(Exception):
                await broken.stop()
            self._producer = await self._new_producer()

    async def close(self) -> None:
        await self._producer.stop()

    async def enqueue(self, topic: Topic, event: Event) -> asyncio.Future[RecordMetadata]:
        """Queue the event without waiting for the broker (the live path: the next frame need
        not wait for this one's ack); the future resolves on the ack. Order is kept."""
        future = await self._producer.send(topic.name, encode(event), key=event.key())
        counter = metrics.EVENTS_OUT.labels(self._service, topic.name)
        future.add_done_callback(
            lambda done: counter.inc() if not done.cancelled() and not done.exception() else None
        )
        return future


C = TypeVar("C", AIOKafkaConsumer, AIOKafkaProducer)


async def started(
    kind: type[C],
    settings: Settings,
    what: str,
    policy: RetryPolicy,
    stop: asyncio.Event | None,
    *topics: str,
    **options: Any,
) -> C:
    """A started Kafka client of ``kind`` (consumer or producer) with the services' quiet
    reconnect settings; while Kafka is down, a fresh client is tried again with backoff (a
    client whose start failed is not started again)."""

    async def attempt() -> C:
        client = kind(
            *topics, bootstrap_servers=settings.kafka_bootstrap, **QUIET_CLIENT, **options
        )
        try:
            await client.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await client.stop()
            raise
        return client

    return await retry_transient(attempt, what, policy, log, stop)


@asynccontextmanager
async def event_producer(
    settings: Settings,
    service: str,
    *,
    low_latency: bool = False,
    stop: asyncio.Event | None = None,
    policy: RetryPolicy | None = None,
) -> AsyncIterator[EventProducer]:
    """``low_latency`` (the live path): the leader's ack only, for frames and live scores that
    are superseded 30 times a second anyway, and what arrives within ``live_linger_ms`` sent
    together (fewer requests for the producer and the broker at many matches). ``policy``:
    how long a start or a send waits for Kafka (default: as long as it is down)."""
    policy = policy or RetryPolicy.of(settings)
    options: dict[str, Any] = (
        {"acks": 1, "linger_ms": settings.live_linger_ms}
        if low_latency
        else {"acks": "all", "enable_idempotence": True}
    )
    what = f"{service}: Kafka producer"

    async def new_producer() -> AIOKafkaProducer:
        return await started(AIOKafkaProducer, settings, what, policy, stop, **options)

    producer = EventProducer(await new_producer(), service, policy, stop, new_producer=new_producer)
    try:
        yield producer
    finally:
        await producer.close()
