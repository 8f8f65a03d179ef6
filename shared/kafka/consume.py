"""The consume loop every service runs: batches from the service's group, each message
handled until it is dealt with (a dependency that is down is waited for; a bad message is
dead-lettered), offsets committed after the handlers returned; and the lag gauges."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord
from aiokafka.errors import CommitFailedError, IllegalStateError
from aiokafka.structs import TopicPartition

from shared import metrics
from shared.events import Event, EventDecodeError, Topic, decode
from shared.kafka.clients import EventProducer, started
from shared.kafka.dead_letters import FailReplay, Rejecter, replay_named_in, where
from shared.retry import (
    OutageLog,
    RetryPolicy,
    Stopped,
    describe,
    is_transient,
    retry_transient,
    sleep_backoff,
)
from shared.settings import Settings

log = logging.getLogger(__package__)

E = TypeVar("E", bound=Event)
R = TypeVar("R")
HANDLER_ATTEMPTS = 3  # failures of a handler, not counting a dependency being down


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
    fail_replay: FailReplay | None = None,
) -> None:
    """Run ``handler`` on every event of ``topic``, up to ``batch_size`` at once, until ``stop``.

    A handler that fails because a dependency is down is retried on the same message, with
    backoff, for as long as the outage lasts; nothing new is taken and no offset is committed
    meanwhile. Only a message that is not a valid ``event_type``, or whose handler fails in
    another way :data:`HANDLER_ATTEMPTS` times, goes to ``events.invalid``, and the replay it
    names (if any) is marked failed through ``fail_replay``. Neither stops the loop.
    """
    stop = stop or asyncio.Event()
    policy = RetryPolicy.of(settings)
    consumer = await group_consumer(settings, service, topic, policy, stop)
    rejecter = Rejecter(service, producer, fail_replay)
    try:
        async for records in batches(consumer, service, batch_size, before_batch, policy, stop):
            done = await asyncio.gather(
                *(
                    handle_record(record, service, event_type, handler, rejecter, policy, stop)
                    for record in records
                )
            )
            if None in done:  # stopped while waiting for a dependency: commit nothing
                break
            await commit(consumer, service, policy, stop)
    except Stopped:
        log.info("%s: stopped while waiting for a dependency", service)
    finally:
        await consumer.stop()


async def group_consumer(
    settings: Settings,
    service: str,
    topic: Topic,
    policy: RetryPolicy,
    stop: asyncio.Event,
    listener: ConsumerRebalanceListener | None = None,
    **options: Any,
) -> AIOKafkaConsumer:
    """The service's consumer of ``topic`` in its group, committing only by hand;
    ``listener`` hears of its rebalances."""
    consumer = await started(
        AIOKafkaConsumer,
        settings,
        f"{service}: Kafka consumer of {topic.name}",
        policy,
        stop,
        *(() if listener else (topic.name,)),
        group_id=settings.consumer_group(service),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_interval_ms=30 * 60 * 1000,
        **options,
    )
    if listener is not None:
        consumer.subscribe([topic.name], listener=listener)
    return consumer


async def batches(
    consumer: AIOKafkaConsumer,
    service: str,
    batch_size: int,
    before_batch: Callable[[], Awaitable[None]] | None,
    policy: RetryPolicy,
    stop: asyncio.Event,
) -> AsyncIterator[list[ConsumerRecord]]:
    """The batches of records, until ``stop``: before each poll ``before_batch`` (retried
    while a dependency is down), then the next records, if any."""
    while not stop.is_set():
        if before_batch is not None:
            await retry_transient(before_batch, f"{service}: preparing", policy, log, stop)
        polled = await consumer.getmany(timeout_ms=500, max_records=batch_size)
        await record_lag(consumer, service)
        if records := [record for partition in polled.values() for record in partition]:
            yield records


async def commit(
    consumer: AIOKafkaConsumer, service: str, policy: RetryPolicy, stop: asyncio.Event
) -> None:
    """Commit the consumed offsets, waiting for Kafka if it is down. A commit refused after a
    rebalance is left: the new owner of the partition handles those messages again (handlers
    are idempotent)."""
    try:
        await retry_transient(consumer.commit, f"{service}: committing offsets", policy, log, stop)
    except (CommitFailedError, IllegalStateError) as error:
        log.warning("%s: offsets not committed (%s): they will be handled again", service, error)


# Per consumer (a service may run several): the partitions whose lag it has reported.
_LAG_REPORTED: weakref.WeakKeyDictionary[AIOKafkaConsumer, set[TopicPartition]] = (
    weakref.WeakKeyDictionary()
)


async def record_lag(consumer: AIOKafkaConsumer, service: str) -> None:
    """Set the lag gauge of each assigned partition: its end minus the consumer's position.

    A partition a rebalance moved to another instance loses its series here: its lag is now
    the other instance's to report, and a stale value would be summed with it.
    """
    assigned = consumer.assignment()
    reported = _LAG_REPORTED.setdefault(consumer, set())
    for tp in reported - assigned:
        with contextlib.suppress(KeyError):
            metrics.CONSUMER_LAG.remove(service, tp.topic, str(tp.partition))
    reported &= assigned
    for tp in assigned:
        try:
            highwater = consumer.highwater(tp)
            if highwater is None:  # nothing fetched from this partition yet
                continue
            position = await consumer.position(tp)
        except (AssertionError, IllegalStateError):  # revoked by a rebalance meanwhile
            continue
        lag = max(highwater - position, 0)
        metrics.CONSUMER_LAG.labels(service, tp.topic, str(tp.partition)).set(lag)
        reported.add(tp)


@dataclass(frozen=True)
class Handled(Generic[R]):
    """A message dealt with: handled (``result``) or dead-lettered (``result`` None)."""

    result: R | None = None


async def handle_record(
    record: ConsumerRecord,
    service: str,
    event_type: type[E],
    handler: Callable[[E], Awaitable[R]],
    rejecter: Rejecter,
    policy: RetryPolicy,
    stop: asyncio.Event,
) -> Handled[R] | None:
    """Handle one message until it is dealt with, or None if the service stops meanwhile."""
    metrics.EVENTS_IN.labels(service, record.topic).inc()
    try:
        event = decode(event_type, record.value)
    except EventDecodeError as error:
        await rejecter.reject(record, "invalid_event", str(error), replay_named_in(record.value))
        return Handled()
    backoff = policy.backoff()
    outage = OutageLog(log, f"{service}: handling {where(record)}", policy.log_every_seconds)
    failures = 0
    while True:
        try:
            with metrics.PROCESSING_SECONDS.labels(service).time():
                result = await handler(event)
            outage.recovered()
            return Handled(result)
        except Stopped:  # a send or query inside gave up waiting because the service stops
            return None
        except Exception as error:
            if is_transient(error):
                if outage.started is None:
                    metrics.ERRORS.labels(service, "dependency_down").inc()
                outage.failed(error)
            else:
                failures += 1
                log.exception("%s: handler failed (%d/%d)", service, failures, HANDLER_ATTEMPTS)
                if failures == HANDLER_ATTEMPTS:
                    replay_id = getattr(event, "replay_id", None)
                    await rejecter.reject(record, "handler_failed", describe(error), replay_id)
                    return Handled()
        await sleep_backoff(backoff, stop)
        if stop.is_set():
            return None
