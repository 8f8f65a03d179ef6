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

READ_TO_END_IDLE_POLLS = 10  # polls of 1 s with nothing new: the end was reached after all


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
