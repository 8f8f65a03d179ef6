"""Messages that cannot be handled: a dead letter on ``events.invalid``, and the replay the
message names (if any) marked failed."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiokafka import ConsumerRecord

from shared import metrics
from shared.events import EVENTS_INVALID, InvalidEvent
from shared.kafka.clients import EventProducer

log = logging.getLogger(__package__)

REPLAY_ID = re.compile(r"[0-9a-f]{64}")

FailReplay = Callable[[str, str, str], Awaitable[None]]
"""Marks a replay failed: (replay_id, reason, error type)."""


async def dead_letter(
    producer: EventProducer, service: str, record: ConsumerRecord, kind: str, reason: str
) -> None:
    """Send a message that cannot be handled to ``events.invalid`` (for loops other than
    :func:`shared.kafka.consume`, which does this itself)."""
    metrics.ERRORS.labels(service, kind).inc()
    raw = record.value.decode("utf-8", errors="replace") if record.value else ""
    await producer.send(EVENTS_INVALID, InvalidEvent(topic=record.topic, reason=reason, raw=raw))


@dataclass(frozen=True)
class Rejecter:
    """What happens to a message that cannot be handled: a dead letter, and the replay it
    names (if any) marked failed."""

    service: str
    producer: EventProducer
    fail_replay: FailReplay | None

    async def reject(
        self, record: ConsumerRecord, kind: str, reason: str, replay_id: str | None
    ) -> None:
        log.error("%s: %s at %s: %s", self.service, kind, where(record), reason)
        await dead_letter(self.producer, self.service, record, kind, reason)
        if replay_id is not None and self.fail_replay is not None:
            await self.fail_replay(replay_id, reason, kind)


def replay_named_in(raw: bytes | None) -> str | None:
    """The replay id an (undecodable) message names, if it names one."""
    try:
        value = json.loads(raw or b"")
    except ValueError:
        return None
    replay_id = value.get("replay_id") if isinstance(value, dict) else None
    return replay_id if isinstance(replay_id, str) and REPLAY_ID.fullmatch(replay_id) else None


def where(record: ConsumerRecord) -> str:
    """A record's place, as logs name it: ``topic[partition]@offset``."""
    return f"{record.topic}[{record.partition}]@{record.offset}"
