"""Trainer service: on ``train.requested``, trains on all featurized replays and registers."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from datetime import UTC, datetime

from services.featurizer.dataset import read_features
from services.featurizer.features import FEATURE_SCHEMA_VERSION
from services.trainer.train import TrainConfig, export_onnx, train_impact_model
from shared import db
from shared.events import MODEL_PROMOTED, TRAIN_REQUESTED, ModelPromoted, TrainRequested
from shared.kafka import consume
from shared.service import ServiceContext, run_service
from shared.storage import BlobStore, sha256_file, uri_to_path

NAME = "trainer"
MODEL_NAME = "impact"
log = logging.getLogger(NAME)


def model_version(replay_ids: list[str]) -> str:
    data_hash = hashlib.sha256("".join(sorted(replay_ids)).encode()).hexdigest()[:8]
    return f"{MODEL_NAME}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{data_hash}"


async def train_and_register(
    ctx: ServiceContext, request: TrainRequested
) -> tuple[db.ModelRecord, int]:
    async with ctx.pool.acquire() as conn:
        rows = await db.featurized_replays(conn)
    tables = await asyncio.to_thread(
        lambda: [read_features(uri_to_path(row["features_uri"])) for row in rows]
    )
    result = await asyncio.to_thread(train_impact_model, tables, TrainConfig(), False)
    version = model_version([t.replay_id for t in tables])
    store = BlobStore(ctx.settings.blob_dir)
    with store.writer("models", version.replace("-", ""), ".onnx") as tmp:
        await asyncio.to_thread(export_onnx, result.model, tmp, version)
    path = store.path_for("models", version.replace("-", ""), ".onnx")
    async with ctx.pool.acquire() as conn:
        record = await db.register_model(
            conn,
            name=MODEL_NAME,
            version=version,
            uri=path.as_uri(),
            sha256=await asyncio.to_thread(sha256_file, path),
            feature_schema_version=FEATURE_SCHEMA_VERSION,
            metrics=result.metrics,
        )
        has_active = await db.active_model(conn) is not None
        promote = request.promote == "always" or (
            request.promote == "if-none-active" and not has_active
        )
        if promote:
            record = await db.promote_model(conn, record.id)
    log.info("registered %s on %d replays: %s", version, len(tables), result.metrics)
    if promote:
        await ctx.producer.send(
            MODEL_PROMOTED, ModelPromoted(model_id=record.id, model_version=record.version)
        )
    return record, len(tables)


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
