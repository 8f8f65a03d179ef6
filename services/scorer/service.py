"""Scorer service: scores each featurized replay once per model; waits while no model is active.

Rows are written first (idempotent by replay, player and model), then announced, then marked
as announced, so a crash at any point neither loses nor duplicates a score.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from services.featurizer.dataset import read_features
from services.scorer.score import ImpactModel, score_table
from shared import db, metrics
from shared.db import ModelRecord
from shared.events import FEATURES_READY, SCORES_EMITTED, FeaturesReady, ScoreEmitted
from shared.kafka import consume
from shared.service import ServiceContext, run_service
from shared.storage import sha256_file, uri_to_path

NAME = "scorer"
log = logging.getLogger(NAME)


@dataclass(frozen=True)
class LoadedModel:
    record: ModelRecord
    model: ImpactModel


class ActiveModel:
    """Follows the ``models`` table: loads the active model when it changes (hot reload)."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.current: LoadedModel | None = None
        self._checked_at = 0.0

    async def refresh(self) -> None:
        async with self.ctx.pool.acquire() as conn:
            record = await db.active_model(conn)
        self._checked_at = time.monotonic()
        if record is None or (self.current and self.current.record.id == record.id):
            return
        path = uri_to_path(record.uri)
        if await asyncio.to_thread(sha256_file, path) != record.sha256:
            metrics.ERRORS.labels(NAME, "model_checksum").inc()
            log.error("model %s at %s fails its checksum: not loaded", record.version, path)
            return
        self.current = LoadedModel(record, await asyncio.to_thread(ImpactModel, path))
        metrics.ACTIVE_MODEL.labels(NAME).set(record.id)
        log.info("now scoring with model %s (id %d)", record.version, record.id)

    async def wait_until_ready(self) -> None:
        """Before each batch: re-check the registry now and then; block while there is no model."""
        while not self.ctx.stop.is_set():
            if time.monotonic() - self._checked_at >= self.ctx.settings.model_poll_seconds:
                await self.refresh()
            if self.current is not None:
                return
            log.info("no active model yet: waiting (nothing is consumed meanwhile)")
            await asyncio.sleep(self.ctx.settings.model_poll_seconds)


async def run(ctx: ServiceContext) -> None:
    active = ActiveModel(ctx)

    async def handle(event: FeaturesReady) -> None:
        loaded = active.current
        assert loaded is not None  # consume() calls wait_until_ready first
        table = await asyncio.to_thread(read_features, uri_to_path(event.features_uri))
        scores = await asyncio.to_thread(score_table, table, loaded.model)
        model_id = loaded.record.id
        async with ctx.pool.acquire() as conn:
            await db.insert_scores(
                conn,
                [(event.replay_id, s.player_index, model_id, s.impact, s.n_frames) for s in scores],
            )
            pending = await db.unemitted_scores(conn, event.replay_id, model_id)
        for row in pending:
            await ctx.producer.send(
                SCORES_EMITTED,
                ScoreEmitted(
                    replay_id=event.replay_id,
                    player_index=row["player_index"],
                    player_name=row["name"],
                    team=row["team"],
                    model_id=model_id,
                    model_version=loaded.record.version,
                    impact=row["impact"],
                    n_frames=row["n_frames"],
                ),
            )
        async with ctx.pool.acquire() as conn:
            await db.mark_emitted(
                conn, event.replay_id, model_id, [r["player_index"] for r in pending]
            )
        log.info("scored %s with %s", event.replay_id[:12], loaded.record.version)

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


def main() -> None:
    run_service(NAME, run)


if __name__ == "__main__":
    main()
