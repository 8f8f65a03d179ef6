"""The live service's per-match state in Kafka, so that a restarted or rebalanced instance goes
on with every match exactly where it stood.

- Each match's state is snapshotted (``services/live/snapshot.py``) every
  ``RLIMPACT_LIVE_SNAPSHOT_SECONDS`` while it changes, to the compacted topic ``live.state``,
  keyed by match id, on the partition of the match's ``live.frames``; a closed match (ended,
  or forgotten when idle) leaves a marker.
- A snapshot says which input offset it reflects. The consumer offset of a partition is
  committed only up to the first frame that no acknowledged snapshot holds, so every frame
  before the committed offset is in some snapshot.
- When a partition is assigned, its snapshots are read and the frames from the committed
  offset on are read again; a frame at or before its state's offset is skipped (the state has
  it already). So after a kill or a rebalance no frame is counted twice or lost.
- When partitions are revoked (a rebalance), their states are snapshotted and their offsets
  committed before the partitions go.

Snapshots are whole states (~130 kB for a 3v3 match: its last 12-14 s of frames), sent with
``acks=all``; the input is read again from at most a few seconds back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from services.live import snapshot
from services.live.scorer import LiveScorer
from services.live.state import MatchState
from shared import metrics
from shared.events import LIVE_FRAMES, LIVE_STATE
from shared.settings import Settings

log = logging.getLogger(__name__)
MAX_SNAPSHOT_BYTES = 4 * 2**20
RESTORE_POLL_MS = 500


@dataclass
class _Saving:
    """A snapshot sent but not yet acknowledged: it holds the frames from ``first`` on."""

    match_id: str
    first: int
    ack: asyncio.Future


@dataclass
class StateLog:
    settings: Settings
    scorer: LiveScorer
    service: str
    producer: AIOKafkaProducer | None = None
    owned: set[int] = field(default_factory=set)
    position: dict[int, int] = field(default_factory=dict)  # next offset to read
    committed: dict[int, int] = field(default_factory=dict)
    saving: dict[int, list[_Saving]] = field(default_factory=dict)
    markers: dict[int, dict[str, int]] = field(default_factory=dict)  # closed: offset
    _commit: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            acks="all",
            enable_idempotence=True,
            max_request_size=MAX_SNAPSHOT_BYTES,
        )
        await self.producer.start()

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()

    # ------------------------------------------------------------ while running

    def read(self, partition: int, offset: int) -> None:
        """A record of ``partition`` was handled."""
        self.position[partition] = offset + 1

    async def save_due(self, now: float) -> None:
        """Snapshot the matches whose snapshot is due, and mark the closed ones."""
        for state in self.scorer.closed:
            if state.partition in self.owned:
                await self._close(state)
        self.scorer.closed.clear()
        for state in list(self.scorer.matches.values()):
            if state.unsaved_from >= 0 and now >= state.snapshot_due:
                await self._save(state, now)

    def commit_soon(self, consumer: AIOKafkaConsumer) -> None:
        """Commit what the acknowledged snapshots allow, in the background (one at a time)."""
        if self._commit is None or self._commit.done():
            self._commit = asyncio.create_task(self.commit(consumer))

    async def commit(self, consumer: AIOKafkaConsumer, partitions: Iterable[int] = ()) -> None:
        wanted = set(partitions) or set(self.owned)
        offsets = {
            p: o
            for p in wanted
            if (o := self._committable(p)) is not None and o > self.committed.get(p, -1)
        }
        if not offsets:
            return
        try:
            await consumer.commit(
                {TopicPartition(LIVE_FRAMES.name, p): o for p, o in offsets.items()}
            )
        except (CommitFailedError, IllegalStateError, KafkaError) as error:
            # a rebalance is under way: the revoke callback commits what is owed
            log.info("offsets not committed (%s): %s", type(error).__name__, error)
            return
        self.committed.update(offsets)
        await self._drop_markers(offsets)

    # ------------------------------------------------------------ rebalances

    async def release(self, consumer: AIOKafkaConsumer, partitions: set[int]) -> None:
        """Before ``partitions`` are revoked: every state of theirs snapshotted, acknowledged
        and their offsets committed. The states stay, in case the partitions come back."""
        if self._commit is not None:
            await asyncio.gather(self._commit, return_exceptions=True)
        for state in self.scorer.closed:
            if state.partition in partitions:
                await self._close(state)
        self.scorer.closed = [s for s in self.scorer.closed if s.partition not in partitions]
        for state in list(self.scorer.matches.values()):
            if state.partition in partitions and state.unsaved_from >= 0:
                await self._save(state, 0.0)
        acks = [s.ack for p in partitions for s in self.saving.get(p, [])]
        await asyncio.gather(*acks, return_exceptions=True)
        await self.commit(consumer, partitions)

    async def take(self, partitions: set[int]) -> None:
        """``partitions`` are assigned: forget the states of the ones that went elsewhere and
        restore those of the new ones from the changelog."""
        gone, new = self.owned - partitions, partitions - self.owned
        for match_id in [m for m, s in self.scorer.matches.items() if s.partition in gone]:
            del self.scorer.matches[match_id]
        for p in gone:
            for match_id in self.markers.pop(p, {}):
                self.scorer.closed_at.pop(match_id, None)
            self.position.pop(p, None)
            self.committed.pop(p, None)
            self.saving.pop(p, None)
        self.owned = set(partitions)
        if new:
            await self._restore(new)

    async def _restore(self, partitions: set[int]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        latest = await read_latest(self.settings, partitions)
        restored = closed = 0
        for partition, records in latest.items():
            for match_id, raw in records.items():
                try:
                    saved = snapshot.decode(raw)
                except snapshot.SnapshotError as error:
                    metrics.ERRORS.labels(self.service, "bad_snapshot").inc()
                    log.error("snapshot of %s not restored: %s", match_id, error)
                    continue
                if saved.state is None:
                    self.scorer.closed_at[match_id] = saved.offset
                    self.markers.setdefault(partition, {})[match_id] = saved.offset
                    closed += 1
                    continue
                state = saved.state
                state.partition, state.last_seen = partition, loop.time()
                # spread the next snapshots over one interval, not all at once
                spread = self.settings.live_snapshot_seconds * restored / max(len(records), 1)
                state.snapshot_due = loop.time() + spread
                self.scorer.matches[match_id] = state
                restored += 1
        log.info(
            "partitions %s: %d match states restored, %d closed matches, in %.2f s",
            sorted(partitions),
            restored,
            closed,
            loop.time() - started,
        )

    # ------------------------------------------------------------ internals

    async def _save(self, state: MatchState, now: float) -> None:
        raw = snapshot.encode(state)
        await self._send(state.match_id, state.partition, raw, state.unsaved_from)
        state.unsaved_from = -1
        state.snapshot_due = now + self.settings.live_snapshot_seconds

    async def _close(self, state: MatchState) -> None:
        if state.offset < 0:
            return
        raw = snapshot.encode_closed(state.match_id, state.offset)
        first = state.unsaved_from if state.unsaved_from >= 0 else state.offset
        await self._send(state.match_id, state.partition, raw, first)
        self.markers.setdefault(state.partition, {})[state.match_id] = state.offset

    async def _send(self, match_id: str, partition: int, raw: bytes | None, first: int) -> None:
        assert self.producer is not None
        ack = await self.producer.send(
            LIVE_STATE.name, raw, key=match_id.encode(), partition=partition
        )
        self.saving.setdefault(partition, []).append(_Saving(match_id, first, ack))
        metrics.EVENTS_OUT.labels(self.service, LIVE_STATE.name).inc()

    def _committable(self, partition: int) -> int | None:
        """The first offset of ``partition`` that no acknowledged snapshot holds yet."""
        if partition not in self.position:
            return None
        bound = self.position[partition]
        pending = []
        for saving in self.saving.get(partition, []):
            if not saving.ack.done():
                pending.append(saving)
                bound = min(bound, saving.first)
            elif saving.ack.cancelled() or saving.ack.exception() is not None:
                self._resave(saving)
                bound = min(bound, saving.first)
        self.saving[partition] = pending
        for state in self.scorer.matches.values():
            if state.partition == partition and state.unsaved_from >= 0:
                bound = min(bound, state.unsaved_from)
        return bound

    def _resave(self, failed: _Saving) -> None:
        """A snapshot was not stored: its frames are unsaved again (the match's next
        snapshot holds them)."""
        metrics.ERRORS.labels(self.service, "snapshot_not_sent").inc()
        state = self.scorer.matches.get(failed.match_id)
        if state is not None:
            froms = [f for f in (state.unsaved_from, failed.first) if f >= 0]
            state.unsaved_from, state.snapshot_due = min(froms), 0.0

    async def _drop_markers(self, committed: dict[int, int]) -> None:
        """Closed matches whose last frame lies before the committed offset are never read
        again: forget them, and delete their markers (a tombstone)."""
        assert self.producer is not None
        for partition, offset in committed.items():
            markers = self.markers.get(partition, {})
            for match_id in [m for m, at in markers.items() if at < offset]:
                del markers[match_id]
                self.scorer.closed_at.pop(match_id, None)
                if match_id not in self.scorer.matches:
                    await self.producer.send(
                        LIVE_STATE.name, None, key=match_id.encode(), partition=partition
                    )


async def read_latest(settings: Settings, partitions: set[int]) -> dict[int, dict[str, bytes]]:
    """The latest record of every key of ``live.state`` on ``partitions`` (deleted keys left
    out), read from the start to the end as it is now."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=2 * MAX_SNAPSHOT_BYTES,
        fetch_max_bytes=16 * MAX_SNAPSHOT_BYTES,
    )
    await consumer.start()
    latest: dict[int, dict[str, bytes]] = {p: {} for p in partitions}
    try:
        tps = [TopicPartition(LIVE_STATE.name, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if end[tp] > 0}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=RESTORE_POLL_MS)
            for tp, records in batches.items():
                for record in records:
                    if record.key is None:
                        continue
                    if record.value is None:
                        latest[tp.partition].pop(record.key.decode(), None)
                    else:
                        latest[tp.partition][record.key.decode()] = record.value
            remaining = {tp for tp in remaining if await consumer.position(tp) < end[tp]}
    finally:
        await consumer.stop()
    return latest
