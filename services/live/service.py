"""Live service: ``live.frames`` -> rolling per-match state -> ``scores.live``; and the score
streams (SSE, JSON, the live page) for browsers and overlays.

Live frames are consumed in batches as they come (a consumer group, so instances share the
matches by partition; a new group starts at the end of the topic: old frames are stale). All
frames of a batch are scored together and each match with new frames gets one ``scores.live``
update, so under load updates are merged rather than delayed. Each match's state lives in
Kafka too (``services/live/changelog.py``): a restarted instance, or the one a match moves to
in a rebalance, goes on from the same totals, with no frame counted twice or lost.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata

from services.live.changelog import StateLog
from services.live.model import LiveModel
from services.live.scorer import LiveScorer
from services.live.web import ScoreHub, feed_hub, serve_web
from shared import metrics
from shared.events import (
    LIVE_FRAMES,
    SCORES_LIVE,
    EventDecodeError,
    LiveFrame,
    LiveScore,
    decode,
    utcnow,
)
from shared.kafka import EventProducer, dead_letter, event_producer, record_lag
from shared.service import ServiceContext, run_service

NAME = "live"
log = logging.getLogger(NAME)
MAX_BATCH = 2000
LAG_INTERVAL_SECONDS = 1.0
COMMIT_INTERVAL_SECONDS = 0.5
# A killed instance's matches move on once the group notices it is gone (the broker's minimum)
SESSION_TIMEOUT_MS = 6000
HEARTBEAT_INTERVAL_MS = 1000


class LiveLoop:
    def __init__(self, ctx: ServiceContext, model: LiveModel, producer: EventProducer) -> None:
        self.ctx, self.model, self.producer = ctx, model, producer
        settings = ctx.settings
        self.scorer = LiveScorer()
        self.state = StateLog(settings, self.scorer, NAME)
        self.lock = asyncio.Lock()  # a batch and a rebalance do not interleave
        self._sending: set[asyncio.Task[None]] = set()
        # Exported from the start, at 0: a rate over the first scores needs a sample before them.
        metrics.LIVE_LATENCY.labels(NAME)

    async def run(self) -> None:
        settings = self.ctx.settings
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=settings.consumer_group(NAME),
            enable_auto_commit=False,
            auto_offset_reset="latest",
            fetch_min_bytes=settings.live_fetch_min_bytes,
            fetch_max_wait_ms=settings.live_fetch_max_wait_ms,
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
        )
        await self.state.start()
        await consumer.start()
        consumer.subscribe([LIVE_FRAMES.name], listener=_Rebalance(self, consumer))
        lag_due = commit_due = 0.0
        try:
            while not self.ctx.stop.is_set():
                batches = await consumer.getmany(timeout_ms=200, max_records=MAX_BATCH)
                now = time.monotonic()
                if now >= lag_due:  # not on every poll: polls come every few ms
                    await record_lag(consumer, NAME)
                    lag_due = now + LAG_INTERVAL_SECONDS
                records = [record for partition in batches.values() for record in partition]
                async with self.lock:
                    if records:
                        await self.handle(records)
                    followed = self.scorer.forget_idle(now, settings.live_match_idle_seconds)
                    await self.state.save_due(now)
                if now >= commit_due:
                    self.state.commit_soon(consumer)
                    commit_due = now + COMMIT_INTERVAL_SECONDS
                metrics.LIVE_MATCHES.labels(NAME).set(followed)
        finally:
            await asyncio.gather(*self._sending, return_exceptions=True)
            async with self.lock:  # a clean stop: the next owner reads nothing again
                await self.state.release(consumer, set(self.state.owned))
            await consumer.stop()
            await self.state.stop()

    async def handle(self, records: list[ConsumerRecord]) -> None:
        records = [r for r in records if r.partition in self.state.owned]  # not revoked since
        metrics.EVENTS_IN.labels(NAME, LIVE_FRAMES.name).inc(len(records))
        decoded = [(record, await self._decode(record)) for record in records]
        for record in records:
            self.state.read(record.partition, record.offset)
        frames = [frame for _, frame in decoded if frame is not None]
        positions = [(r.partition, r.offset) for r, frame in decoded if frame is not None]
        current = self.model.current
        if current is None:
            metrics.LIVE_FRAMES_SKIPPED.labels(NAME, "no_model").inc(len(frames))
            return
        with metrics.PROCESSING_SECONDS.labels(NAME).time():
            try:
                updates, skipped = self.scorer.score(frames, current, time.monotonic(), positions)
            except Exception as error:  # one bad batch must not stop live scoring
                log.exception("live batch of %d frames not scored", len(frames))
                metrics.ERRORS.labels(NAME, type(error).__name__).inc()
                metrics.LIVE_FRAMES_SKIPPED.labels(NAME, "error").inc(len(frames))
                self.scorer.drop_pending()
                return
        for reason, count in skipped.items():
            metrics.LIVE_FRAMES_SKIPPED.labels(NAME, reason).inc(count)
        # The next batch does not wait for the broker's acks of this one.
        futures = [await self.producer.enqueue(SCORES_LIVE, update) for update in updates]
        task = asyncio.create_task(self._observe(updates, futures))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _observe(
        self, updates: list[LiveScore], futures: list[asyncio.Future[RecordMetadata]]
    ) -> None:
        """Once the broker has the updates: the latency from the bridge's receipt."""
        try:
            await asyncio.gather(*futures)
        except KafkaError as error:
            metrics.ERRORS.labels(NAME, type(error).__name__).inc()
            log.warning("scores.live not sent: %s", error)
            return
        sent = utcnow()
        latency = metrics.LIVE_LATENCY.labels(NAME)
        for update in updates:
            for received_at in update.frames_received_at:
                latency.observe((sent - received_at).total_seconds())

    async def _decode(self, record: ConsumerRecord) -> LiveFrame | None:
        try:
            return decode(LiveFrame, record.value)
        except EventDecodeError as error:
            await dead_letter(self.producer, NAME, record, "invalid_event", str(error))
            return None


class _Rebalance(ConsumerRebalanceListener):
    """Partitions go only once their states are saved; new ones come with theirs restored."""

    def __init__(self, loop: LiveLoop, consumer: AIOKafkaConsumer) -> None:
        self.loop, self.consumer = loop, consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self.loop.lock:
            await self.loop.state.release(self.consumer, {tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        async with self.loop.lock:
            await self.loop.state.take({tp.partition for tp in assigned})


async def run(ctx: ServiceContext) -> None:
    model = LiveModel(NAME, ctx.settings, ctx.pool)
    await model.refresh()
    hub = ScoreHub(NAME)
    web = await serve_web(hub, ctx.settings)
    async with event_producer(ctx.settings, NAME, low_latency=True) as producer:
        helpers = [
            asyncio.create_task(model.follow(ctx.stop)),
            asyncio.create_task(feed_hub(hub, ctx.settings, ctx.stop)),
        ]
        try:
            await LiveLoop(ctx, model, producer).run()
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await web.cleanup()


def main() -> None:
    run_service(NAME, run, latency_bound=True)


if __name__ == "__main__":
    main()
