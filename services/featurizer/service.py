"""Featurizer service: frames file -> Parquet feature table -> ``features.ready``.

An event whose ``frames_uri`` is not the stored frames blob of its replay (or that names no
known replay) is refused (``events.invalid``) without touching any replay.
"""

from __future__ import annotations

import asyncio
import logging

from shared import db
from shared.events import FEATURES_READY, FRAMES_PARSED, FeaturesReady, FramesParsed
from shared.features.batch import featurize
from shared.features.dataset import write_features
from shared.features.table import FEATURE_SCHEMA_VERSION
from shared.frames import ParsedReplay, frames_suffix
from shared.kafka import consume
from shared.retry import is_transient
from shared.service import ServiceContext, run_service
from shared.storage import BlobOutsideStore, BlobStore, open_blob_store

NAME = "featurizer"
log = logging.getLogger(NAME)


def featurize_to_store(
    event: FramesParsed, horizon_seconds: float, store: BlobStore
) -> FeaturesReady:
    with store.local_path(event.frames_uri) as path:
        parsed = ParsedReplay.load(path)
    if parsed.replay_id != event.replay_id:
        raise ValueError(f"the frames file is replay {parsed.replay_id[:12]}'s")
    table = featurize(parsed, horizon_seconds)
    with store.writer("features", event.replay_id, ".parquet") as tmp:
        write_features(table, tmp)
    return FeaturesReady(
        replay_id=event.replay_id,
        features_uri=store.uri_for("features", event.replay_id, ".parquet"),
        feature_schema_version=FEATURE_SCHEMA_VERSION,
        n_frames=event.n_frames,
        players=event.players,
    )


def check_frames(event: FramesParsed, store: BlobStore, status: str | None) -> str | None:
    """Why the event must be refused, or None."""
    if status is None:
        return f"replay {event.replay_id[:12]} is not a known replay"
    try:
        suffix = frames_suffix(event.frames_uri)  # frames files written before are still read
        store.expect(event.frames_uri, "frames", event.replay_id, suffix)
    except BlobOutsideStore as error:
        return str(error)
    return None


async def run(ctx: ServiceContext) -> None:
    store = open_blob_store(ctx.settings)

    async def handle(event: FramesParsed) -> None:
        async with ctx.pool.acquire() as conn:
            stored = await db.stored_replay(conn, event.replay_id)
        status = stored and stored["status"]
        if reason := check_frames(event, store, status):
            await ctx.refuse_event(FRAMES_PARSED, event, reason)
            return
        if status == "scored":
            log.info("%s is scored already: nothing to do", event.replay_id[:12])
            return
        try:
            ready = await asyncio.to_thread(
                featurize_to_store, event, ctx.settings.horizon_seconds, store
            )
        except (OSError, ValueError) as error:  # missing/corrupt frames file, bad contents
            if is_transient(error):  # the blob store is down, not the replay bad: wait
                raise
            reason = f"cannot featurize: {error}"
            await ctx.fail_replay(event.replay_id, "featurize", reason, type(error).__name__)
            return
        async with ctx.pool.acquire() as conn:
            await db.set_status(
                conn, event.replay_id, "featurize", "featurized", features_uri=ready.features_uri
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
