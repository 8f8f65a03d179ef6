"""Trainer service: on ``train.requested``, trains on all featurized replays and registers.

It trains the impact model and, when Postgres holds skill labels (``player_labels``) for
featurized replays, the skill model too. Each is exported to ONNX, checked against torch
(max abs difference <= ``PARITY_TOLERANCE``), registered as a candidate, and promoted as the
request says. Checkpoints, milestones and the loss curve go to ``$DATA_DIR/runs/<kind>-<hash>``,
named after the training data, so a trainer killed mid-run resumes it when the request is
delivered again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from torch import nn

from services.trainer.config import SHIPPED_RECIPE
from services.trainer.export import OnnxSignature, export_onnx, onnx_parity
from services.trainer.fit import data_hash
from services.trainer.skill import (
    SKILL_SIGNATURE,
    PlayerKey,
    SkillConfig,
    SkillNet,
    export_skill_onnx,
    train_skill_model,
)
from services.trainer.train import TrainResult, train_impact_model
from shared import db
from shared.events import TRAIN_REQUESTED, ModelKind, TrainRequested
from shared.features.dataset import check_label_horizon, read_stored_features
from shared.features.table import FEATURE_SCHEMA_VERSION, N_FEATURES, FeatureTable
from shared.kafka import consume
from shared.model import split_metadata
from shared.registry import promote_and_announce
from shared.service import ServiceContext, run_service
from shared.skill import player_sequences
from shared.storage import open_blob_store, sha256_file

NAME = "trainer"
PARITY_TOLERANCE = 1e-4
PARITY_ROWS = 4096
log = logging.getLogger(NAME)


def model_version(kind: ModelKind, replay_ids: list[str]) -> str:
    return f"{kind}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{data_hash(replay_ids, ())[:8]}"


def run_dir(ctx: ServiceContext, kind: str, replay_ids: list[str], labels: list[str]) -> Path:
    return ctx.settings.data_dir / "runs" / f"{kind}-{data_hash(replay_ids, (), labels)[:16]}"


def mean_ratings(labels: list[db.PlayerLabel]) -> dict[PlayerKey, float]:
    """One rating per (replay, player): the mean over the sources that rated the player."""
    by_player: dict[PlayerKey, list[float]] = defaultdict(list)
    for label in labels:
        by_player[(label.replay_id, label.player_index)].append(label.skill_rating)
    return {key: float(np.mean(values)) for key, values in by_player.items()}


async def register(
    ctx: ServiceContext,
    kind: ModelKind,
    result: TrainResult,
    request: TrainRequested,
    export: Callable[[nn.Module, Path, str], None],
    parity_input: np.ndarray,
    signature: OnnxSignature,
) -> db.ModelRecord:
    """Export, check ONNX against torch, register as a candidate, promote as requested."""
    version = model_version(kind, result.train_replays + result.val_replays)
    store = open_blob_store(ctx.settings)
    blob_id = version.replace("-", "")
    with store.writer("models", blob_id, ".onnx") as tmp:
        await asyncio.to_thread(export, result.model, tmp, version)
        parity = await asyncio.to_thread(onnx_parity, result.model, tmp, parity_input, signature)
        if parity > PARITY_TOLERANCE:
            raise ValueError(f"ONNX export of {version} differs from torch by {parity:.2e}")
        sha256 = await asyncio.to_thread(sha256_file, tmp)
    async with ctx.pool.acquire() as conn:
        record = await db.register_model(
            conn,
            name=kind,
            version=version,
            uri=store.uri_for("models", blob_id, ".onnx"),
            sha256=sha256,
            feature_schema_version=FEATURE_SCHEMA_VERSION,
            metrics={**result.metrics, "onnx_max_abs_diff": parity},
            kind=kind,
        )
        has_active = await db.active_model(conn, kind) is not None
    promote = request.promote == "always" or (
        request.promote == "if-none-active" and not has_active
    )
    if promote:
        record = await promote_and_announce(ctx, record.id)
    log.info("registered %s (%s): %s", version, record.status, result.metrics)
    return record


async def train_and_register(
    ctx: ServiceContext, request: TrainRequested
) -> tuple[db.ModelRecord, int]:
    async with ctx.pool.acquire() as conn:
        rows = await db.featurized_replays(conn)
        labels = await db.player_labels(conn)
    store = open_blob_store(ctx.settings)
    tables = await asyncio.to_thread(
        lambda: [read_stored_features(store, row["features_uri"]) for row in rows]
    )
    check_label_horizon(tables, ctx.settings.horizon_seconds)
    replay_ids = [t.replay_id for t in tables]
    result = await asyncio.to_thread(
        train_impact_model, tables, SHIPPED_RECIPE, False, run_dir(ctx, "impact", replay_ids, [])
    )
    parity_rows = tables[0].features.reshape(-1, N_FEATURES)[:PARITY_ROWS]
    export = functools.partial(
        export_onnx, metadata=split_metadata(result.train_replays, result.val_replays)
    )
    record = await register(ctx, "impact", result, request, export, parity_rows, OnnxSignature())
    ratings = mean_ratings([label for label in labels if label.replay_id in set(replay_ids)])
    if ratings:
        await train_skill(ctx, request, tables, ratings)
    return record, len(tables)


async def train_skill(
    ctx: ServiceContext,
    request: TrainRequested,
    tables: list[FeatureTable],
    ratings: Mapping[PlayerKey, float],
) -> db.ModelRecord | None:
    """The skill model, on the featurized replays that have labels; None if too few."""
    config = SkillConfig()
    label_lines = [f"{key[0]} {key[1]} {value}" for key, value in ratings.items()]
    folder = run_dir(ctx, "skill", [t.replay_id for t in tables], label_lines)
    try:
        result = await asyncio.to_thread(train_skill_model, tables, ratings, config, False, folder)
    except ValueError as error:  # too few labelled players: the impact model stands alone
        log.warning("no skill model: %s", error)
        return None
    labelled = next(t for t in tables if any((t.replay_id, p.index) in ratings for p in t.players))
    sequences = player_sequences(labelled, config.stride)

    def export(model: nn.Module, path: Path, version: str) -> None:
        assert isinstance(model, SkillNet)  # what train_skill_model trains
        export_skill_onnx(model, path, version, config.stride)

    return await register(ctx, "skill", result, request, export, sequences, SKILL_SIGNATURE)


async def run(ctx: ServiceContext) -> None:
    async def handle(request: TrainRequested) -> None:
        async with ctx.pool.acquire() as conn:
            job_id = await db.start_train_job(conn)
        try:
            record, n_replays = await train_and_register(ctx, request)
        except ValueError as error:  # e.g. too few featurized replays: the job fails, we go on
            log.error("train job %d failed: %s", job_id, error)
            async with ctx.pool.acquire() as conn:
                await db.finish_train_job(conn, job_id, error=str(error))
            return
        async with ctx.pool.acquire() as conn:
            await db.finish_train_job(conn, job_id, model_id=record.id, n_replays=n_replays)

    await consume(
        ctx.settings, NAME, TRAIN_REQUESTED, TrainRequested, handle, ctx.producer, stop=ctx.stop
    )


def main() -> None:
    run_service(NAME, run)


if __name__ == "__main__":
    main()
