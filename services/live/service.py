"""Live service: ``live.frames`` -> rolling per-match state -> ``scores.live``; and the score
streams (SSE, JSON, the live page) for browsers and overlays.

Live frames are consumed in batches as they come (a consumer group, so instances share the
matches by partition; a new group starts at the end of the topic: old frames are stale). All
frames of a batch are scored together and each match with new frames gets one ``scores.live``
update, so under load updates are merged rather than delayed. Offsets are committed
automatically: after a crash a few frames may be scored twice or not at all (and the totals
start again from zero); the durable record of a match is its replay.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata

from services.live.model import LiveModel
from services.live.state import LiveScorer
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


class LiveLoop:
    def __init__(self, ctx: ServiceContext, model: LiveModel, producer: EventProducer) -> None:
        self.ctx, self.model, self.producer = ctx, model, producer
        settings = ctx.settings
        self.scorer = LiveScorer(settings.horizon_seconds)
        self._sending: set[asyncio.Task[None]] = set()
        # Exported from the start, at 0: a rate over the first scores needs a sample before them.
        metrics.LIVE_LATENCY.labels(NAME)

    async def run(self) -> None:
        settings = self.ctx.settings
        consumer = AIOKafkaConsumer(
            LIVE_FRAMES.name,
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=settings.consumer_group(NAME),
            enable_auto_commit=True,
            auto_offset_reset="latest",
            fetch_max_wait_ms=100,
        )
        await consumer.start()
        lag_due = 0.0
        try:
            while not self.ctx.stop.is_set():
                batches = await consumer.getmany(timeout_ms=200, max_records=MAX_BATCH)
                if time.monotonic() >= lag_due:  # not on every poll: polls come every few ms
                    await record_lag(consumer, NAME)
                    lag_due = time.monotonic() + LAG_INTERVAL_SECONDS
                records = [record for partition in batches.values() for record in partition]
                if records:
                    await self.handle(records)
                followed = self.scorer.forget_idle(
                    time.monotonic(), settings.live_match_idle_seconds
                )
                metrics.LIVE_MATCHES.labels(NAME).set(followed)
        finally:
            await asyncio.gather(*self._sending, return_exceptions=True)
            await consumer.stop()

    async def handle(self, records: list[ConsumerRecord]) -> None:
        frames = [frame for record in records if (frame := await self._decode(record))]
        current = self.model.current
        if current is None:
            metrics.LIVE_FRAMES_SKIPPED.labels(NAME, "no_model").inc(len(frames))
            return
        with metrics.PROCESSING_SECONDS.labels(NAME).time():
            try:
                updates, skipped = self.scorer.score(frames, current, time.monotonic())
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
        metrics.EVENTS_IN.labels(NAME, record.topic).inc()
        try:
            return decode(LiveFrame, record.value)
        except EventDecodeError as error:
            await dead_letter(self.producer, NAME, record, "invalid_event", str(error))
            return None


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
