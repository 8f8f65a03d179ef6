"""ensure_topics against the stack's Kafka: a topic is created with its partitions, and an
existing topic with fewer partitions than configured is grown, once."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from shared.events import HOUR_MS, Topic
from shared.kafka import ensure_topics
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


async def _partitions(stack: Stack, name: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.settings.kafka_bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([name])
        return len(described["partitions"])
    finally:
        await admin.close()


async def test_an_existing_topic_with_fewer_partitions_grows(stack: Stack, caplog):
    narrow = Topic("test.partitions", partitions=2, retention_ms=HOUR_MS)
    assert await ensure_topics(stack.settings, (narrow,)) == [narrow.name]
    assert await _partitions(stack, narrow.name) == 2

    wide = dataclasses.replace(narrow, partitions=6)
    with caplog.at_level(logging.WARNING, logger="shared.kafka"):
        assert await ensure_topics(stack.settings, (wide,)) == []
    assert await _partitions(stack, narrow.name) == 6
    assert "test.partitions: growing from 2 to 6 partitions" in caplog.text

    caplog.clear()
    assert await ensure_topics(stack.settings, (narrow,)) == []  # never shrunk, nothing logged
    assert await _partitions(stack, narrow.name) == 6
    assert "growing" not in caplog.text
