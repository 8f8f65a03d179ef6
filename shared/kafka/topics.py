"""Topic setup: create the missing topics, grow the ones with fewer partitions than wanted."""

from __future__ import annotations

import contextlib
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.errors import InvalidPartitionsError, TopicAlreadyExistsError

from shared.events import ALL_TOPICS, Topic
from shared.settings import Settings

log = logging.getLogger(__package__)  # one logger for the package, as when it was one module

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
