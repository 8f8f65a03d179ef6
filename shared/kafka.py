"""Kafka on aiokafka: topic setup, a typed producer, and the consume loop every service runs.

Delivery is at-least-once: offsets are committed only after the handler returned, i.e. after
its results are durable. Handlers are idempotent (keyed by content hash and model id), so a
redelivery after a crash changes nothing. A dependency that is down (Postgres, Kafka, the
blob store) is waited for, with backoff, on the same message (:mod:`shared.retry`); only a
message that is itself bad is dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    InvalidPartitionsError,
    KafkaError,
    TopicAlreadyExistsError,
)
from aiokafka.structs import OffsetAndMetadata, RecordMetadata, TopicPartition

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

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)
R = TypeVar("R")
HANDLER_ATTEMPTS = 3  # failures of a handler, not counting a dependency being down
REPLAY_ID = re.compile(r"[0-9a-f]{64}")
READ_TO_END_IDLE_POLLS = 10  # polls of 1 s with nothing new: the end was reached after all

# Every client of the services: while the broker is down, reconnect and retry at most every
# second or so (aiokafka's defaults of 50-100 ms make every client spin and log).
QUIET_CLIENT: dict[str, Any] = {"retry_backoff_ms": 1000}
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
    """Create missing topics with their partitions (``Settings.partitions``) and retention,
    and grow existing ones that have fewer partitions; return the names created."""
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
                            num_partitions=settings.partitions(topic),
                            replication_factor=1,
                            topic_configs={
                                "retention.ms": str(topic.retention_ms),
                                **(COMPACTED_CONFIGS if topic.compacted else {}),
                            },
                        )
                    ]
                )
        wanted = {t.name: settings.partitions(t) for t in topics if t.name in existing}
        await _grow_partitions(admin, wanted)
        return [t.name for t in missing]
    finally:
        await admin.close()


def partitions_to_add(wanted: dict[str, int], have: dict[str, int]) -> dict[str, int]:
    """Topic -> partition count, for the topics that have fewer partitions than wanted."""
    return {name: count for name, count in wanted.items() if have.get(name, count) < count}


async def _grow_partitions(admin: AIOKafkaAdminClient, wanted: dict[str, int]) -> None:
    if not wanted:
        return
    described = await admin.describe_topics(list(wanted))
    have = {t["topic"]: len(t["partitions"]) for t in described if not t["error_code"]}
    for name, count in partitions_to_add(wanted, have).items():
        # A key may hash to another partition from now on: on the replay path a replay has one
        # event (or one burst) per topic, so nothing is reordered; a live match playing through
        # the growth moves to another partition, perhaps to another live instance.
        log.warning("topic %s: growing from %d to %d partitions", name, have[name], count)
        try:
            await admin.create_partitions({name: NewPartitions(total_count=count)})
        except InvalidPartitionsError:  # another service starting beside us grew it first
            log.info("topic %s: already grown", name)


class EventProducer:
    """Sends events; a send that fails because Kafka is down is retried until it succeeds (or
    the service stops), never turned into a lost or dead-lettered message."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        service: str,
        policy: RetryPolicy | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        self._producer = producer
        self._service = service
        self._policy = policy or RetryPolicy()
        self._stop = stop

    async def send(self, topic: Topic, event: Event) -> None:
        value, key = encode(event), event.key()
        await retry_transient(
            lambda: self._producer.send_and_wait(topic.name, value, key=key),
            f"{self._service}: sending to {topic.name}",
            self._policy,
            log,
            self._stop,
        )
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
    producer = await started(AIOKafkaProducer, settings, what, policy, stop, **options)
    try:
        yield EventProducer(producer, service, policy, stop)
    finally:
        await producer.stop()


FailReplay = Callable[[str, str, str], Awaitable[None]]
"""Marks a replay failed: (replay_id, reason, error type)."""


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
    consumer = await _group_consumer(settings, service, topic, policy, stop)
    rejecter = _Rejecter(service, producer, fail_replay)
    try:
        while not stop.is_set():
            records = await _next_batch(consumer, service, batch_size, before_batch, policy, stop)
            if not records:
                continue
            done = await asyncio.gather(
                *(
                    _handle(record, service, event_type, handler, rejecter, policy, stop)
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


async def _group_consumer(
    settings: Settings,
    service: str,
    topic: Topic,
    policy: RetryPolicy,
    stop: asyncio.Event,
    **options: Any,
) -> AIOKafkaConsumer:
    """The service's consumer of ``topic`` in its group, committing only by hand."""
    return await started(
        AIOKafkaConsumer,
        settings,
        f"{service}: Kafka consumer of {topic.name}",
        policy,
        stop,
        topic.name,
        group_id=settings.consumer_group(service),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_interval_ms=30 * 60 * 1000,
        **options,
    )


async def _next_batch(
    consumer: AIOKafkaConsumer,
    service: str,
    batch_size: int,
    before_batch: Callable[[], Awaitable[None]] | None,
    policy: RetryPolicy,
    stop: asyncio.Event,
) -> list[ConsumerRecord]:
    """``before_batch`` (retried while a dependency is down), then the next records, if any."""
    if before_batch is not None:
        await retry_transient(before_batch, f"{service}: preparing", policy, log, stop)
    batches = await consumer.getmany(timeout_ms=500, max_records=batch_size)
    await record_lag(consumer, service)
    return [record for partition in batches.values() for record in partition]


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


@dataclass(frozen=True)
class Emission:
    """What a transactional handler has to announce for one message, and what to record
    once the transaction that announces it is committed."""

    events: list[tuple[Topic, Event]]
    committed: Callable[[], Awaitable[None]] | None = None


async def consume_in_transactions(
    settings: Settings,
    service: str,
    topic: Topic,
    event_type: type[E],
    handler: Callable[[E], Awaitable[Emission]],
    producer: EventProducer,
    *,
    transactional_id: str,
    after_fencing: Callable[[], Awaitable[None]] | None = None,
    before_batch: Callable[[], Awaitable[None]] | None = None,
    stop: asyncio.Event | None = None,
    fail_replay: FailReplay | None = None,
    batch_size: int = 1,
) -> None:
    """Exactly once: Kafka's consume-transform-produce. The events ``handler`` returns for a
    batch and the batch's input offsets are committed in one Kafka transaction, so a
    ``read_committed`` reader sees each event once however the process dies: a transaction
    cut short is aborted (by the broker's timeout, or when this ``transactional_id`` starts
    again and fences the old process) and its input is consumed again. ``after_fencing`` runs
    once the old process is fenced, before anything is consumed. Transient failures, dead
    letters and ``fail_replay`` behave as in :func:`consume`; ``producer`` sends dead letters.
    """
    stop = stop or asyncio.Event()
    policy = RetryPolicy.of(settings)
    transactions = _Transactions(settings, service, transactional_id, policy, stop)
    try:
        await transactions.start()
        if after_fencing is not None:
            await retry_transient(after_fencing, f"{service}: recovering", policy, log, stop)
        consumer = await _group_consumer(
            settings, service, topic, policy, stop, isolation_level="read_committed"
        )
    except Stopped:
        await transactions.stop()
        return
    rejecter = _Rejecter(service, producer, fail_replay)
    try:
        while not stop.is_set():
            records = await _next_batch(consumer, service, batch_size, before_batch, policy, stop)
            if not records:
                continue
            handled = [
                await _handle(record, service, event_type, handler, rejecter, policy, stop)
                for record in records
            ]
            if None in handled:  # stopped while waiting for a dependency: commit nothing
                break
            emissions = [h.result for h in handled if h is not None and h.result is not None]
            events = [sent for emission in emissions for sent in emission.events]
            await transactions.commit(events, next_offsets(records))
            for topic_name, count in Counter(t.name for t, _ in events).items():
                metrics.EVENTS_OUT.labels(service, topic_name).inc(count)
            for emission in emissions:
                if emission.committed is not None:
                    await retry_transient(
                        emission.committed, f"{service}: recording", policy, log, stop
                    )
    except Stopped:
        log.info("%s: stopped while waiting for a dependency", service)
    finally:
        await consumer.stop()
        await transactions.stop()


class _Transactions:
    """The transactional producer of one consume loop. Starting it fences an earlier producer
    of the same transactional id (its open transaction is aborted). If the broker drops the
    producer's epoch (a transaction timed out while Kafka was away, say), the producer is
    replaced once and the batch sent again: its input offsets were not committed."""

    def __init__(
        self,
        settings: Settings,
        service: str,
        transactional_id: str,
        policy: RetryPolicy,
        stop: asyncio.Event,
    ) -> None:
        self.settings, self.service, self.transactional_id = settings, service, transactional_id
        self.policy, self.stop_event = policy, stop
        self.group = settings.consumer_group(service)
        self.producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        self.producer = await started(
            AIOKafkaProducer,
            self.settings,
            f"{self.service}: Kafka transactional producer",
            self.policy,
            self.stop_event,
            transactional_id=self.transactional_id,
            enable_idempotence=True,
            acks="all",
        )
        await self._retried([], {}, f"fencing an earlier {self.transactional_id}")

    async def commit(
        self, events: list[tuple[Topic, Event]], offsets: dict[TopicPartition, OffsetAndMetadata]
    ) -> None:
        try:
            await self._retried(events, offsets, "committing a transaction")
        except KafkaError as error:
            log.warning("%s: transaction refused (%s): a new producer", self.service, error)
            await self.stop()
            await self.start()
            await self._retried(events, offsets, "committing a transaction")

    async def _retried(
        self,
        events: list[tuple[Topic, Event]],
        offsets: dict[TopicPartition, OffsetAndMetadata],
        what: str,
    ) -> None:
        assert self.producer is not None
        await retry_transient(
            partial(_in_transaction, self.producer, events, offsets, self.group),
            f"{self.service}: {what}",
            self.policy,
            log,
            self.stop_event,
        )

    async def stop(self) -> None:
        if self.producer is not None:
            with contextlib.suppress(Exception):
                await self.producer.stop()
            self.producer = None


def next_offsets(records: list[ConsumerRecord]) -> dict[TopicPartition, OffsetAndMetadata]:
    """The offsets to commit once ``records`` are done: per partition, the one after the last."""
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
    return {tp: OffsetAndMetadata(offset, "") for tp, offset in offsets.items()}


async def _in_transaction(
    producer: AIOKafkaProducer,
    events: list[tuple[Topic, Event]],
    offsets: dict[TopicPartition, OffsetAndMetadata],
    group: str,
) -> None:
    """Send ``events`` and commit ``offsets`` for ``group`` in one transaction (an empty one
    fences an earlier producer of the same transactional id); aborted if anything fails."""
    await producer.begin_transaction()
    try:
        for topic, event in events:
            await producer.send(topic.name, encode(event), key=event.key())
        if offsets:
            await producer.send_offsets_to_transaction(offsets, group)
        await producer.commit_transaction()
    except BaseException:
        with contextlib.suppress(Exception):
            await producer.abort_transaction()
        raise


async def committed_records_since(
    settings: Settings,
    topic: Topic,
    since: datetime,
    policy: RetryPolicy,
    stop: asyncio.Event | None = None,
) -> AsyncIterator[ConsumerRecord]:
    """Every committed record of ``topic`` (``read_committed``: none of an aborted or open
    transaction) written from about ``since`` to the end of the topic as of now."""
    consumer = await started(
        AIOKafkaConsumer,
        settings,
        f"reading {topic.name}",
        policy,
        stop,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    try:
        tps = [TopicPartition(topic.name, p) for p in range(settings.partitions(topic))]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)  # the last stable offsets (read_committed)
        starts = await consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in tps})
        todo: dict[TopicPartition, int] = {}
        for tp in tps:
            start = starts.get(tp)
            if start is not None and start.offset < ends[tp]:
                consumer.seek(tp, start.offset)
                todo[tp] = ends[tp]
        idle = 0
        while todo and idle < READ_TO_END_IDLE_POLLS:
            batches = await consumer.getmany(*todo, timeout_ms=1000)
            idle = 0 if batches else idle + 1
            for tp, records in batches.items():
                for record in records:
                    if record.offset < todo.get(tp, 0):
                        yield record
            for tp in list(todo):
                if await consumer.position(tp) >= todo[tp]:
                    del todo[tp]
    finally:
        await consumer.stop()


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


async def dead_letter(
    producer: EventProducer, service: str, record: ConsumerRecord, kind: str, reason: str
) -> None:
    """Send a message that cannot be handled to ``events.invalid`` (for loops other than
    :func:`consume`, which does this itself)."""
    metrics.ERRORS.labels(service, kind).inc()
    raw = record.value.decode("utf-8", errors="replace") if record.value else ""
    await producer.send(EVENTS_INVALID, InvalidEvent(topic=record.topic, reason=reason, raw=raw))


@dataclass(frozen=True)
class _Rejecter:
    """What happens to a message that cannot be handled: a dead letter, and the replay it
    names (if any) marked failed."""

    service: str
    producer: EventProducer
    fail_replay: FailReplay | None

    async def reject(
        self, record: ConsumerRecord, kind: str, reason: str, replay_id: str | None
    ) -> None:
        log.error("%s: %s at %s: %s", self.service, kind, _where(record), reason)
        await dead_letter(self.producer, self.service, record, kind, reason)
        if replay_id is not None and self.fail_replay is not None:
            await self.fail_replay(replay_id, reason, kind)


@dataclass(frozen=True)
class _Handled(Generic[R]):
    """A message dealt with: handled (``result``) or dead-lettered (``result`` None)."""

    result: R | None = None


async def _handle(
    record: ConsumerRecord,
    service: str,
    event_type: type[E],
    handler: Callable[[E], Awaitable[R]],
    rejecter: _Rejecter,
    policy: RetryPolicy,
    stop: asyncio.Event,
) -> _Handled[R] | None:
    """Handle one message until it is dealt with, or None if the service stops meanwhile."""
    metrics.EVENTS_IN.labels(service, record.topic).inc()
    try:
        event = decode(event_type, record.value)
    except EventDecodeError as error:
        await rejecter.reject(record, "invalid_event", str(error), replay_named_in(record.value))
        return _Handled()
    backoff = policy.backoff()
    outage = OutageLog(log, f"{service}: handling {_where(record)}", policy.log_every_seconds)
    failures = 0
    while True:
        try:
            with metrics.PROCESSING_SECONDS.labels(service).time():
                result = await handler(event)
            outage.recovered()
            return _Handled(result)
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
                    return _Handled()
        await sleep_backoff(backoff, stop)
        if stop.is_set():
            return None


def replay_named_in(raw: bytes | None) -> str | None:
    """The replay id an (undecodable) message names, if it names one."""
    try:
        value = json.loads(raw or b"")
    except ValueError:
        return None
    replay_id = value.get("replay_id") if isinstance(value, dict) else None
    return replay_id if isinstance(replay_id, str) and REPLAY_ID.fullmatch(replay_id) else None


def _where(record: ConsumerRecord) -> str:
    return f"{record.topic}[{record.partition}]@{record.offset}"
