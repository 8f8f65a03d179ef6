"""Ingestor service: polls the watched folder; one ``replay.uploaded`` per distinct content."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from prometheus_client import Counter

from services.ingestor.ingest import FolderWatcher, IngestRejected, upload_event
from shared import db
from shared.events import REPLAY_UPLOADED, ReplayUploaded
from shared.service import ServiceContext, run_service
from shared.storage import BlobStore, sha256_file

NAME = "ingestor"
log = logging.getLogger(NAME)
DUPLICATES = Counter("rlimpact_ingest_duplicates_total", "Files whose content was already known")


async def ingest_path(
    path: Path, store: BlobStore, ctx: ServiceContext, source: str = "watch"
) -> ReplayUploaded | None:
    """Store, record and announce one file; None for a duplicate or a rejected file."""
    try:
        event = await asyncio.to_thread(
            upload_event, path, store, ctx.settings.max_replay_bytes, source
        )
    except IngestRejected as rejected:
        await _reject(path, rejected.reason, ctx)
        return None
    async with ctx.pool.acquire() as conn:
        if not await db.insert_replay(conn, event):
            DUPLICATES.inc()
            log.info("duplicate content %s (%s): skipped", event.replay_id[:12], path.name)
            return None
    await publish(event, ctx)
    log.info("ingested %s as %s", path.name, event.replay_id[:12])
    return event


async def publish(event: ReplayUploaded, ctx: ServiceContext) -> None:
    await ctx.producer.send(REPLAY_UPLOADED, event)
    async with ctx.pool.acquire() as conn:
        await db.set_status(conn, event.replay_id, "ingest", "uploaded")


async def republish_unannounced(ctx: ServiceContext) -> int:
    """Replays recorded but never announced (a crash between the two) are announced now."""
    async with ctx.pool.acquire() as conn:
        rows = await db.unpublished_replays(conn)
    for row in rows:
        await publish(
            ReplayUploaded(
                replay_id=row["id"],
                uri=row["uri"],
                filename=row["filename"],
                size_bytes=row["size_bytes"],
                source=row["source"],
            ),
            ctx,
        )
    return len(rows)


async def _reject(path: Path, reason: str, ctx: ServiceContext) -> None:
    replay_id = await asyncio.to_thread(sha256_file, path)
    await ctx.fail_replay(replay_id, "ingest", reason, "IngestRejected", path.as_uri())


async def run(ctx: ServiceContext) -> None:
    store = BlobStore(ctx.settings.blob_dir)
    inbox = ctx.settings.inbox_dir
    inbox.mkdir(parents=True, exist_ok=True)
    if recovered := await republish_unannounced(ctx):
        log.info("announced %d replays left unannounced by an earlier run", recovered)
    watcher = FolderWatcher(inbox)
    log.info("watching %s", inbox)
    while not ctx.stop.is_set():
        for path in watcher.poll():
            await ingest_path(path, store, ctx)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.stop.wait(), ctx.settings.watch_interval_seconds)


def main() -> None:
    run_service(NAME, run)


if __name__ == "__main__":
    main()
