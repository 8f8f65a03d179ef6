"""Scorer service: scores each featurized replay once per model; waits while no model is active.

Rows are written first (idempotent by replay, player and model), then announced, then marked
as announced, so a crash at any point neither loses nor duplicates a score.

Hot reload: the active impact model (and skill model, if any) is re-read from the registry
when a ``model.promoted`` event arrives (every scorer instance reads that topic, outside any
consumer group) and, as a fallback, every ``RLIMPACT_MODEL_POLL_SECONDS``. The switch happens
between two batches of ``features.ready``: a replay being scored finishes with the model it
started with, the next one uses the new model; nothing is skipped, nothing is scored twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard, TypeVar

from aiokafka import AIOKafkaConsumer

from shared import db, metrics
from shared.db import ModelRecord, ScoreRow
from shared.events import (
    FEATURES_READY,
    MODEL_PROMOTED,
    SCORES_EMITTED,
    EventDecodeError,
    FeaturesReady,
    ModelPromoted,
    ScoreEmitted,
    decode,
)
from shared.features.dataset import read_stored_features
from shared.impact import score_table
from shared.kafka import consume
from shared.model import ImpactModel, ModelSchemaError
from shared.service import ServiceContext, run_service
from shared.skill import SkillModel, estimate_skill
from shared.storage import BlobOutsideStore, BlobStore, open_blob_store, open_checked

NAME = "scorer"
log = logging.getLogger(NAME)
L = TypeVar("L")


@dataclass(frozen=True)
class LoadedModel:
    record: ModelRecord
    model: ImpactModel


@dataclass(frozen=True)
class LoadedSkill:
    record: ModelRecord
    model: SkillModel


@dataclass(frozen=True)
class Scorers:
    """The models one replay is scored with."""

    impact: LoadedModel
    skill: LoadedSkill | None = None


async def load_impact(record: ModelRecord, store: BlobStore) -> LoadedModel:
    return LoadedModel(record, await _load_checked(record, store, ImpactModel))


async def load_skill(record: ModelRecord, store: BlobStore) -> LoadedSkill:
    return LoadedSkill(record, await _load_checked(record, store, SkillModel))


async def _load_checked(record: ModelRecord, store: BlobStore, model: Callable[[Path], L]) -> L:
    def load() -> L:
        with open_checked(store, record.uri, record.sha256) as path:
            return model(path)

    return await asyncio.to_thread(load)


class ActiveModel:
    """Follows the ``models`` table: loads the active models when they change (hot reload)."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.current: LoadedModel | None = None
        self.skill: LoadedSkill | None = None
        self._checked_at = 0.0
        self._failed: set[int] = set()  # model ids that would not load: not retried
        self.store = open_blob_store(ctx.settings)

    def request_refresh(self) -> None:
        """Re-read the registry before the next batch (a model was promoted)."""
        self._checked_at = float("-inf")

    @property
    def scorers(self) -> Scorers:
        assert self.current is not None
        return Scorers(self.current, self.skill)

    async def refresh(self) -> None:
        async with self.ctx.pool.acquire() as conn:
            impact = await db.active_model(conn, "impact")
            skill = await db.active_model(conn, "skill")
        self._checked_at = time.monotonic()
        if self._wanted(impact, self.current) and (loaded := await self._load(load_impact, impact)):
            self.current = loaded
            metrics.ACTIVE_MODEL.labels(NAME).set(loaded.record.id)
            log.info("now scoring with model %s (id %d)", loaded.record.version, loaded.record.id)
        if skill is None and self.skill is not None:
            log.info("no active skill model any more: scores carry no skill estimate")
            self.skill = None
        elif self._wanted(skill, self.skill) and (new := await self._load(load_skill, skill)):
            self.skill = new
            log.info("now estimating skill with %s (id %d)", new.record.version, new.record.id)

    def _wanted(
        self, record: ModelRecord | None, loaded: LoadedModel | LoadedSkill | None
    ) -> TypeGuard[ModelRecord]:
        """A model is active that is neither loaded nor known not to load."""
        if record is None or record.id in self._failed:
            return False
        return loaded is None or loaded.record.id != record.id

    async def _load(
        self, loader: Callable[[ModelRecord, BlobStore], Awaitable[L]], record: ModelRecord
    ) -> L | None:
        try:
            return await loader(record, self.store)
        except (ModelSchemaError, OSError, RuntimeError, ValueError) as error:
            self._failed.add(record.id)
            metrics.ERRORS.labels(NAME, "model_load").inc()
            log.error("model %s not loaded, keeping the current one: %s", record.version, error)
            return None

    async def wait_until_ready(self) -> None:
        """Before each batch: re-check the registry now and then; block while there is no model."""
        while not self.ctx.stop.is_set():
            if time.monotonic() - self._checked_at >= self.ctx.settings.model_poll_seconds:
                await self.refresh()
            if self.current is not None:
                return
            log.info("no active model yet: waiting (nothing is consumed meanwhile)")
            await asyncio.sleep(self.ctx.settings.model_poll_seconds)


async def follow_promotions(ctx: ServiceContext, active: ActiveModel) -> None:
    """Every ``model.promoted`` event makes this instance re-read the registry at once.

    No consumer group: every scorer instance sees every promotion. Starts at the end of the
    topic: what was promoted before this instance started is in the registry already.
    """
    consumer = AIOKafkaConsumer(
        MODEL_PROMOTED.name,
        bootstrap_servers=ctx.settings.kafka_bootstrap,
        group_id=None,
        auto_offset_reset="latest",
    )
    await consumer.start()
    try:
        while not ctx.stop.is_set():
            batches = await consumer.getmany(timeout_ms=500)
            for record in (r for records in batches.values() for r in records):
                try:
                    event = decode(ModelPromoted, record.value)
                except EventDecodeError as error:  # the registry poll still catches up
                    log.warning("ignoring a model.promoted message: %s", error)
                    continue
                log.info("model %s (%s) promoted: reloading", event.model_version, event.kind)
                active.request_refresh()
    finally:
        await consumer.stop()


async def score_replay(
    ctx: ServiceContext, replay_id: str, features_uri: str, scorers: Scorers
) -> int:
    """Score one stored replay with ``scorers``, record and announce it; return the number of
    ``scores.emitted`` events sent (0 when it was scored and announced with this model before).
    """
    table = await asyncio.to_thread(
        read_stored_features, open_blob_store(ctx.settings), features_uri
    )
    scores = await asyncio.to_thread(score_table, table, scorers.impact.model)
    skill = scorers.skill
    ratings = await asyncio.to_thread(estimate_skill, table, skill.model) if skill else {}
    model_id = scorers.impact.record.id
    rows = [
        ScoreRow(
            replay_id=replay_id,
            player_index=s.player_index,
            model_id=model_id,
            impact=s.impact,
            offence=s.offence,
            defence=s.defence,
            n_frames=s.n_frames,
            impact_per_minute=s.impact_per_minute,
            touches=s.touches,
            skill=ratings.get(s.player_index),
            skill_model_id=skill.record.id if skill else None,
        )
        for s in scores
    ]
    async with ctx.pool.acquire() as conn:
        await db.insert_scores(conn, rows)
        pending = await db.unemitted_scores(conn, replay_id, model_id)
    versions = {model_id: scorers.impact.record.version}
    if skill:
        versions[skill.record.id] = skill.record.version
    for stored in pending:
        row = stored.row
        await ctx.producer.send(
            SCORES_EMITTED,
            ScoreEmitted(
                replay_id=replay_id,
                player_index=row.player_index,
                player_name=stored.name,
                team=stored.team,
                model_id=model_id,
                model_version=versions[model_id],
                impact=row.impact,
                offence=row.offence,
                defence=row.defence,
                impact_per_minute=row.impact_per_minute,
                touches=row.touches,
                n_frames=row.n_frames,
                skill=row.skill,
                skill_model_id=row.skill_model_id,
                skill_model_version=versions.get(row.skill_model_id or -1),
            ),
        )
    async with ctx.pool.acquire() as conn:
        await db.mark_emitted(conn, replay_id, model_id, [s.row.player_index for s in pending])
    return len(pending)


async def run(ctx: ServiceContext) -> None:
    active = ActiveModel(ctx)

    async def handle(event: FeaturesReady) -> None:
        try:
            active.store.expect(event.features_uri, "features", event.replay_id, ".parquet")
        except BlobOutsideStore as error:
            await ctx.refuse_event(FEATURES_READY, event, str(error))
            return
        scorers = active.scorers  # consume() calls wait_until_ready before each batch
        await score_replay(ctx, event.replay_id, event.features_uri, scorers)
        log.info("scored %s with %s", event.replay_id[:12], scorers.impact.record.version)

    promotions = asyncio.create_task(follow_promotions(ctx, active))
    try:
        await consume(
            ctx.settings,
            NAME,
            FEATURES_READY,
            FeaturesReady,
            handle,
            ctx.producer,
            before_batch=active.wait_until_ready,
            stop=ctx.stop,
        )
    finally:
        promotions.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await promotions


def main() -> None:
    run_service(NAME, run)


if __name__ == "__main__":
    main()
