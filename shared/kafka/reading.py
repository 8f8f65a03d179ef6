"""Reading a topic's committed records from a point in time to its current end (outside any
consumer group)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.structs import TopicPartition

from shared.events import Topic
from shared.kafka.clients import started
from shared.retry import RetryPolicy
from shared.settings import Settings

# How long the open transactions of a dead producer can hold a partition's last stable offset
# back: aiokafka's default transaction timeout, after which the broker aborts them, and a margin
TRANSACTIONS_END_SECONDS = 60.0 + 30.0


async def committed_records_since(
    settings: Settings,
    topic: Topic,
    since: datetime,
    policy: RetryPolicy,
    stop: asyncio.Event | None = None,
) -> AsyncIterator[ConsumerRecord]:
    """Every committed record of ``topic`` (``read_committed``: none of an aborted or open
    transaction) written from about ``since`` to the end of the topic as of now, read once
    every transaction open now has ended: a transaction whose commit is under way when this
    starts is read, not missed. Raises TimeoutError (a transient error: try again) if the
    end is not reached within ``TRANSACTIONS_END_SECONDS``."""
    todo = await _offsets_to_read(settings, topic, since, policy, stop)
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
        consumer.assign(list(todo))
        for tp, (start, _) in todo.items():
            consumer.seek(tp, start)
        deadline = asyncio.get_running_loop().time() + TRANSACTIONS_END_SECONDS
        while todo:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{topic.name} not read to its end: a transaction stays open")
            batches = await consumer.getmany(*todo, timeout_ms=1000)
            for tp, records in batches.items():
                for record in records:
                    if record.offset < todo.get(tp, (0, 0))[1]:
                        yield record
            for tp in list(todo):
                # past the end as of the start: every transaction open then has ended
                if await consumer.position(tp) >= todo[tp][1]:
                    del todo[tp]
    finally:
        await consumer.stop()


async def _offsets_to_read(
    settings: Settings,
    topic: Topic,
    since: datetime,
    policy: RetryPolicy,
    stop: asyncio.Event | None,
) -> dict[TopicPartition, tuple[int, int]]:
    """Per partition with records from ``since`` on, the offset of the first and the end, both
    counting the records of open transactions (a ``read_committed`` client's offsets stop
    short of them)."""
    consumer = await started(
        AIOKafkaConsumer, settings, f"offsets of {topic.name}", policy, stop, group_id=None
    )
    try:
        tps = [TopicPartition(topic.name, p) for p in range(settings.partitions(topic))]
        ends = await consumer.end_offsets(tps)
        starts = await consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in tps})
    finally:
        await consumer.stop()
    return {
        tp: (start.offset, ends[tp])
        for tp, start in starts.items()
        if start is not None and start.offset < ends[tp]
    }
