"""Scorer service: scores each featurized replay once per model, exactly once on Kafka.

Rows are written first (idempotent by replay, player and model); then the ``scores.emitted``
events and the ``features.ready`` offsets are committed in one Kafka transaction; then the rows
are marked as announced and the replay ``scored``. A ``read_committed`` reader of
``scores.emitted`` sees each (replay, player, model) once, however the scorer dies: before the
commit, the transaction is aborted and the input consumed again; after it, the rows announced
but not marked are found on ``scores.emitted`` at the next start (after this instance's
transactional id fenced the dead process) and marked, so a later duplicate ``features.ready``
announces nothing. With several instances, a rebalance waits for the batch in hand
(:class:`shared.kafka.transactions.Ownership`), and rows another attempt wrote but did not
mark are looked up on ``scores.emitted`` before they are announced (:func:`announced_earlier`).
One limit: ``rlimpact rescore`` (:func:`score_replay`) announces outside transactions.

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
from dataclasses import astuple, dataclass
from datetime import datetime, timedelta

from shared import db, metrics
from shared.backoff import sleep_unless_stopped
from shared.db import ModelRecord, ScoreKey, ScoreRow, StoredScore
from shared.events import (
    FEATURES_READY,
    SCORES_EMITTED,
    EventDecodeError,
    FeaturesReady,
    ScoreEmitted,
    decode,
)
from shared.features.dataset import read_stored_features
from shared.features.table import FEATURE_SCHEMA_VERSION
from shared.impact import score_table
from shared.kafka import Emission, committed_records_since, consume_in_transactions
from shared.model import DEFAULT_MODEL_FILE, ImpactModel
from shared.registry import (
    MODEL_LOAD_ERRORS,
    LoadedModel,
    ModelFollower,
    ensure_active_impact_model,
    follow_promotions,
    load_checked,
)
from shared.retry import RetryPolicy, Stopped, is_transient
from shared.service import ServiceContext, run_service
from shared.settings import Settings
from shared.skill import SkillModel, estimate_skill
from shared.storage import BlobOutsideStore, BlobStore, open_blob_store

NAME = "scorer"
# Event timestamps come from this host's clock, score rows' from Postgres's: the start-up scan
# of scores.emitted begins this long before the oldest unmarked row.
CLOCK_MARGIN = timedelta(minutes=5)
log = logging.getLogger(NAME)


LoadedImpact = LoadedModel[ImpactModel]
LoadedSkill = LoadedModel[SkillModel]


@dataclass(frozen=True)
class Scorers:
    """The models one replay is scored with."""

    impact: LoadedImpact
    skill: LoadedSkill | None = None


async def load_impact(record: ModelRecord, store: BlobStore) -> LoadedImpact:
    return await load_checked(record, store, ImpactModel)


async def load_skill(record: ModelRecord, store: BlobStore) -> LoadedSkill:
    return await load_checked(record, store, SkillModel)


class ActiveModel:
    """Follows the registry's active impact and skill models (hot reload, through
    :class:`shared.registry.ModelFollower`).

    When no impact model is active at all (a fresh stack), the shipped model
    (``models/default/impact.onnx``) is registered and promoted first, so replays are scored
    with no manual step, and with the model the live service uses too.
    """

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.impact = ModelFollower(NAME, ctx.settings, "impact", ImpactModel)
        self.skill = ModelFollower(NAME, ctx.settings, "skill", SkillModel)
        self._checked_at = 0.0
        self._no_default = False  # the shipped model could not be registered: not retried
        self._said_waiting = False
        self.store = self.impact.store

    def request_refresh(self) -> None:
        """Re-read the registry before the next batch (a model was promoted)."""
        self._checked_at = float("-inf")

    @property
    def scorers(self) -> Scorers:
        assert self.impact.current is not None
        return Scorers(self.impact.current, self.skill.current)

    async def refresh(self) -> None:
        impact = await self.impact.active(self.ctx.pool)
        skill = await self.skill.active(self.ctx.pool)
        if impact is None and await self._promote_default():
            impact = await self.impact.active(self.ctx.pool)
        self._checked_at = time.monotonic()
        if loaded := await self.impact.follow(impact):
            metrics.ACTIVE_MODEL.labels(NAME).set(loaded.record.id)
            log.info("now scoring with model %s (id %d)", loaded.record.version, loaded.record.id)
        if skill is None and self.skill.current is not None:
            log.info("no active skill model any more: scores carry no skill estimate")
            self.skill.current = None
        elif new := await self.skill.follow(skill):
            log.info("now estimating skill with %s (id %d)", new.record.version, new.record.id)

    async def _promote_default(self) -> bool:
        """Make the shipped model the active impact model; False if it cannot be."""
        if self._no_default:
            return False
        path = self.ctx.settings.default_model_dir / DEFAULT_MODEL_FILE
        try:
            shipped = await asyncio.to_thread(ImpactModel, path)
        except MODEL_LOAD_ERRORS as error:
            self._no_default = True
            metrics.ERRORS.labels(NAME, "model_load").inc()
            log.error("the shipped model %s cannot be used: %s", path, error)
            return False
        try:
            await ensure_active_impact_model(
                self.ctx.pool,
                self.ctx.producer,
                self.ctx.settings,
                path,
                version=shipped.version,
                feature_schema_version=FEATURE_SCHEMA_VERSION,
            )
        except Exception as error:
            if is_transient(error):
                raise
            self._no_default = True
            metrics.ERRORS.labels(NAME, "model_register").inc()
            log.error("the shipped model %s could not be registered: %s", path, error)
            return False
        return True

    async def wait_until_ready(self) -> None:
        """Before each batch: re-check the registry now and then; block while there is no model.
        A database that is down makes this raise a transient error: the caller retries it."""
        while not self.ctx.stop.is_set():
            if time.monotonic() - self._checked_at >= self.ctx.settings.model_poll_seconds:
                await self.refresh()
            if self.impact.current is not None:
                return
            if not self._said_waiting:
                log.info("no usable impact model: waiting (nothing is consumed meanwhile)")
                self._said_waiting = True
            await sleep_unless_stopped(self.ctx.stop, self.ctx.settings.model_poll_seconds)


async def stored_scores(
    ctx: ServiceContext, replay_id: str, features_uri: str, scorers: Scorers
) -> list[StoredScore]:
    """Score one stored replay with ``scorers`` and record the rows (a replay scored with this
    model before keeps its rows); return the rows not announced yet."""
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
            pace=s.pace,
            skill=ratings.get(s.player_index),
            skill_model_id=skill.record.id if skill else None,
        )
        for s in scores
    ]
    async with ctx.pool.acquire() as conn:
        written = await db.insert_scores(conn, rows)
        pending = await db.unemitted_scores(conn, replay_id, model_id)
    if inherited := {s.row.player_index for s in pending} - written:
        announced = await announced_earlier(ctx, replay_id, model_id, inherited)
        pending = [s for s in pending if s.row.player_index not in announced]
    return pending


async def announced_earlier(
    ctx: ServiceContext, replay_id: str, model_id: int, player_indexes: set[int]
) -> set[int]:
    """Rows of ``replay_id`` an earlier attempt wrote and did not mark: another scorer (or
    this one's previous process) may have announced them in a transaction that committed just
    before it died, and the duplicate ``features.ready`` reached this one before that scorer
    came back to mark them. ``scores.emitted`` decides: those announced there are marked now,
    the others returned for announcing."""
    async with ctx.pool.acquire() as conn:
        unmarked, oldest = await db.unemitted_keys(conn, replay_id, model_id)
    keys = {k for k in unmarked if k.player_index in player_indexes}
    found = await found_on_scores_emitted(ctx, keys, oldest)
    async with ctx.pool.acquire() as conn:
        await db.mark_keys_emitted(conn, sorted(found, key=astuple))
    if found:
        log.info("%s: %d score rows had been announced before; marked", replay_id[:12], len(found))
    return {k.player_index for k in found}


async def found_on_scores_emitted(
    ctx: ServiceContext, keys: set[ScoreKey], oldest: datetime | None
) -> set[ScoreKey]:
    """Those of ``keys`` (rows written from ``oldest`` on) that a committed ``scores.emitted``
    event announces, once every transaction open now has ended (aborted or committed)."""
    if not keys or oldest is None:
        return set()
    policy = RetryPolicy.of(ctx.settings)
    found: set[ScoreKey] = set()
    async for record in committed_records_since(
        ctx.settings, SCORES_EMITTED, oldest - CLOCK_MARGIN, policy
    ):
        try:
            event = decode(ScoreEmitted, record.value)
        except EventDecodeError:
            continue
        key = ScoreKey(event.replay_id, event.player_index, event.model_id)
        if key in keys:
            found.add(key)
    return found


def score_events(pending: list[StoredScore], scorers: Scorers) -> list[ScoreEmitted]:
    """The ``scores.emitted`` events announcing ``pending``."""
    impact = scorers.impact.record
    versions = {impact.id: impact.version}
    if scorers.skill:
        versions[scorers.skill.record.id] = scorers.skill.record.version
    return [
        ScoreEmitted(
            replay_id=row.replay_id,
            player_index=row.player_index,
            player_name=stored.name,
            team=stored.team,
            model_id=impact.id,
            model_version=impact.version,
            impact=row.impact,
            offence=row.offence,
            defence=row.defence,
            impact_per_minute=row.impact_per_minute,
            touches=row.touches,
            pace=row.pace,
            n_frames=row.n_frames,
            skill=row.skill,
            skill_model_id=row.skill_model_id,
            skill_model_version=versions.get(row.skill_model_id or -1),
        )
        for stored in pending
        for row in (stored.row,)
    ]


async def score_replay(
    ctx: ServiceContext, replay_id: str, features_uri: str, scorers: Scorers
) -> int:
    """Score, record and announce one replay outside the scorer's transactions (``rlimpact
    rescore``); return the number of ``scores.emitted`` events sent (0 when it was scored and
    announced with this model before). A crash between a send and the mark that follows it
    can announce a row twice; the scorer service's own path cannot."""
    pending = await stored_scores(ctx, replay_id, features_uri, scorers)
    for event in score_events(pending, scorers):
        await ctx.producer.send(SCORES_EMITTED, event)
    model_id = scorers.impact.record.id
    async with ctx.pool.acquire() as conn:
        await db.mark_emitted(conn, replay_id, model_id, [s.row.player_index for s in pending])
    return len(pending)


async def mark_announced_before(ctx: ServiceContext) -> int:
    """Start-up, after the previous scorer of this instance was fenced: score rows it had
    announced (its transaction committed) but not yet marked when it died are found on
    ``scores.emitted`` and marked, so a later duplicate ``features.ready`` does not announce
    them again. Returns how many were marked."""
    async with ctx.pool.acquire() as conn:
        unmarked, oldest = await db.unemitted_keys(conn)
    if oldest is None:
        return 0
    found = await found_on_scores_emitted(ctx, unmarked, oldest)
    async with ctx.pool.acquire() as conn:
        await db.mark_keys_emitted(conn, sorted(found, key=astuple))
        for replay_id, model_id in sorted({(k.replay_id, k.model_id) for k in found}):
            await db.mark_scored(conn, replay_id, model_id)
    log.info(
        "start-up: %d of %d unmarked score rows had been announced; marked",
        len(found),
        len(unmarked),
    )
    return len(found)


def transactional_id(settings: Settings) -> str:
    return f"{settings.consumer_group_prefix}-{NAME}-{settings.instance}"


async def run(ctx: ServiceContext) -> None:
    active = ActiveModel(ctx)

    async def handle(event: FeaturesReady) -> Emission:
        try:
            active.store.expect(event.features_uri, "features", event.replay_id, ".parquet")
        except BlobOutsideStore as error:
            await ctx.refuse_event(FEATURES_READY, event, str(error))
            return Emission([])  # nothing to announce; its offset is committed all the same
        scorers = active.scorers  # wait_until_ready runs before each batch
        pending = await stored_scores(ctx, event.replay_id, event.features_uri, scorers)
        model = scorers.impact.record

        async def committed() -> None:
            # one transaction: a replay whose rows are marked is also scored
            async with ctx.pool.acquire() as conn, conn.transaction():
                indexes = [s.row.player_index for s in pending]
                await db.mark_emitted(conn, event.replay_id, model.id, indexes)
                await db.mark_scored(conn, event.replay_id, model.id)
            log.info("scored %s with %s", event.replay_id[:12], model.version)

        events = [(SCORES_EMITTED, e) for e in score_events(pending, scorers)]
        return Emission(events, committed)

    promotions = asyncio.create_task(
        follow_promotions(ctx.settings, NAME, ctx.stop, active.request_refresh)
    )
    try:
        await consume_in_transactions(
            ctx.settings,
            NAME,
            FEATURES_READY,
            FeaturesReady,
            handle,
            ctx.producer,
            transactional_id=transactional_id(ctx.settings),
            after_fencing=lambda: mark_announced_before(ctx),
            before_batch=active.wait_until_ready,
            stop=ctx.stop,
            fail_replay=ctx.replay_failer("score"),
        )
    finally:
        promotions.cancel()
        with contextlib.suppress(asyncio.CancelledError, Stopped):
            await promotions


def main() -> None:
    run_service(NAME, run)


if __name__ == "__main__":
    main()
