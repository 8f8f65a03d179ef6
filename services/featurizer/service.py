"""Featurizer service: frames file -> Parquet feature table -> ``features.ready``."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from services.featurizer.dataset import write_features
from services.featurizer.features import FEATURE_SCHEMA_VERSION, featurize
from shared import db
from shared.events import FEATURES_READY, FRAMES_PARSED, FeaturesReady, FramesParsed
from shared.frames import ParsedReplay
from shared.kafka import consume
from shared.retry import is_transient
from shared.service import ServiceContext, run_service
from shared.storage import BlobStore, uri_to_path

NAME = "featurizer"
log = logging.getLogger(NAME)


def featurize_to_store(
    event: FramesParsed, horizon_seconds: float, blob_dir: Path
) -> FeaturesReady:
    table = featurize(ParsedReplay.load(uri_to_path(event.frames_uri)), horizon_seconds)
    store = BlobStore(blob_dir)
    with store.writer("features", event.replay_id, ".parquet") as tmp:
        write_features(table, tmp)
    return FeaturesReady(
        replay_id=event.replay_id,
        features_uri=store.path_for("features", event.replay_id, ".parquet").as_uri(),
        feature_schema_version=FEATURE_SCHEMA_VERSION,
        n_frames=event.n_frames,
        players=event.players,
    )


async def run(ctx: ServiceContext) -> None:
    async def handle(event: FramesParsed) -> None:
        try:
            ready = await asyncio.to_thread(
                featurize_to_store, event, ctx.settings.horizon_seconds, ctx.settings.blob_dir
            )
        except (OSError, ValueError) as error:  # missing/corrupt frames file, bad contents
            if is_transient(error):  # the blob store is down, not the replay bad: wait
                raise
            reason = f"cannot featurize: {error}"
            await ctx.fail_replay(event.replay_id, "featurize", reason, type(error).__name__)
            return
        async with ctx.pool.acquire() as conn:
            await db.set_status(
                conn, event.replay_id, NAME, "featurized", features_uri=ready.features_uri
            )
        await ctx.producer.send(FEATURES_READY, ready)
        log.info("featurized %s", event.replay_id[:12])

    await consume(
        ctx.settings,
        NAME,
        FRAMES_PARSED,
        FramesParsed,
        handle,
        ctx.producer,
        stop=ctx.stop,
        fail_replay=ctx.replay_failer("featurize"),
    )


def main() -> None:
    run_service(NAME, run)


if __name__ == "__main__":
    main()
