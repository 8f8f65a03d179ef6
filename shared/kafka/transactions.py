"""Exactly once on Kafka: the consume-transform-produce loop, whose output events and input
offsets are committed in one transaction."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from shared import metrics
from shared.events import Event, Topic, encode
from shared.kafka.clients import EventProducer, started
from shared.kafka.consume import batches, group_consumer, handle_record
from shared.kafka.dead_letters import FailReplay, Rejecter
from shared.retry import RetryPolicy, Stopped, retry_transient
from shared.settings import Settings

log = logging.getLogger(__package__)

# How long a rebalance waits for the batch in hand (a record's handling, then the commit)
REBALANCE_TIMEOUT_MS = 120_000

E = TypeVar("E", bound=Event)


@dataclass(frozen=True)
class Emission:
    """What a transactional handler has to announce for one message, and what to record
    once the transaction that announces it is committed."""

    events: Sequence[tuple[Topic, Event]]
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
    after_fencing: Callable[[], Awaitable[object]] | None = None,
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
    letters and ``fail_replay`` behave as in :func:`shared.kafka.consume`; ``producer`` sends
    dead letters.
    """
    stop = stop or asyncio.Event()
    policy = RetryPolicy.of(settings)
    transactions = _Transactions(settings, service, transactional_id, policy, stop)
    ownership = Ownership()
    try:
        await transactions.start()
        if after_fencing is not None:
            await retry_transient(after_fencing, f"{service}: recovering", policy, log, stop)
        consumer = await group_consumer(
            settings,
            service,
            topic,
            policy,
            stop,
            listener=ownership,
            isolation_level="read_committed",
            rebalance_timeout_ms=REBALANCE_TIMEOUT_MS,
        )
    except Stopped:
        await transactions.stop()
        return
    rejecter = Rejecter(service, producer, fail_replay)
    try:
        polls = ownership.polls(before_batch)
        async for records in batches(consumer, service, batch_size, polls, policy, stop):
            async with ownership.batch():
                handled = []
                for record in records:
                    if ownership.moved_since_poll() or ownership.revoking:
                        ownership.fetch_again(consumer, records)
                        break
                    handled.append(
                        await handle_record(
                            record, service, event_type, handler, rejecter, policy, stop
                        )
                    )
                if len(handled) < len(records):  # the partitions are moving: left to their owner
                    continue
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


class Ownership(ConsumerRebalanceListener):
    """Keeps a batch and a rebalance apart. Without it, an instance still handling a batch
    when its partitions move would commit the batch's transaction after the new owner had read
    the old offsets and handled the batch again: a zombie's commit that Kafka accepts (aiokafka
    sends no group generation with the transaction's offsets), so a ``read_committed`` reader
    would see its events twice. So a rebalance (``on_partitions_revoked``) waits for the batch
    in hand: the record being handled is finished, the rest of the batch left uncommitted
    (``revoking``), or, once handled, the batch is committed and recorded first. A batch
    polled before a rebalance that ended while it waited for its turn is not handled either.
    Records left so are read again from the committed offsets, by whoever owns them next.
    The rebalance waits at most ``REBALANCE_TIMEOUT_MS`` (a record whose dependency is down
    for longer lets the group go on without this instance: the one case left)."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._rebalances = 0
        self._at_poll = 0
        self.revoking = False

    def polls(
        self, before_batch: Callable[[], Awaitable[None]] | None
    ) -> Callable[[], Awaitable[None]]:
        """``before_batch``, noting before each poll how many rebalances there have been."""

        async def before_poll() -> None:
            self._at_poll = self._rebalances
            if before_batch is not None:
                await before_batch()

        return before_poll

    def batch(self) -> asyncio.Lock:
        return self._lock

    def moved_since_poll(self) -> bool:
        return self._rebalances != self._at_poll

    @staticmethod
    def fetch_again(consumer: AIOKafkaConsumer, records: list[ConsumerRecord]) -> None:
        """Seek back to the batch's records on partitions still assigned here; the others are
        their new owner's."""
        first: dict[TopicPartition, int] = {}
        for record in records:  # in offset order within each partition
            first.setdefault(TopicPartition(record.topic, record.partition), record.offset)
        assigned = consumer.assignment()
        for tp, offset in first.items():
            if tp in assigned:
                consumer.seek(tp, offset)
        log.info("partitions moving: a batch of %d left to be read again", len(records))

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.revoking = True
        try:
            async with self._lock:
                self._rebalances += 1
        finally:
            self.revoking = False

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._rebalances += 1


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
