"""Ingestor service: one ``replay.uploaded`` per distinct content, from three sources.

- the watched folder (``RLIMPACT_WATCH_DIR``);
- new objects under ``RLIMPACT_S3_PREFIX`` in the S3-compatible bucket ``RLIMPACT_S3_BUCKET``;
- ``replay.submitted`` events that point at a file (``rlimpact upload`` or any producer).

Every file goes through :func:`ingest_file`: the limits of ``ingest.py``, then hash, blob store,
``replays`` row and the event. A known hash is a duplicate, unless its replay is stranded
(neither scored nor failed, its status unchanged for ``RLIMPACT_RECONCILE_AFTER_SECONDS``): it is
resumed from the stage it reached (``shared/recovery.py``). Bucket objects and submitted files
are recorded in ``ingest_objects`` after that, so a restart neither repeats nor misses one.

The ingestor also runs the reconciler (:func:`shared.recovery.reconcile_forever`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import asyncpg

from services.ingestor.ingest import (
    FolderWatcher,
    IngestRejected,
    check_name,
    check_size,
    rejection_id,
    resolve_inside,
    shown,
    upload_event,
)
from services.ingestor.s3 import Bucket, BucketUnavailable, ObjectInfo, parse_s3_uri
from shared import db, metrics
from shared.backoff import sleep_unless_stopped
from shared.events import REPLAY_SUBMITTED, REPLAY_UPLOADED, ReplaySubmitted, ReplayUploaded
from shared.kafka import consume
from shared.recovery import ReplayState, plan_redrive, reconcile_forever, redrive
from shared.service import ServiceContext, run_service
from shared.storage import BlobStore, open_blob_store, uri_to_path

NAME = "ingestor"
log = logging.getLogger(NAME)
LISTING_PAGE = 1000

Outcome = Literal["new", "duplicate", "rejected", "resumed"]


@dataclass(frozen=True)
class IngestResult:
    outcome: Outcome
    replay_id: str  # for a rejection, rejection_id(uri)
    reason: str | None = None
    event: ReplayUploaded | None = None


class ErrorLog:
    """Logs a failure with its traceback the first time its kind is seen, in one line after."""

    MAX_REMEMBERED = 1000

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def report(self, what: str, error: Exception, retry_seconds: float) -> None:
        kind = f"{type(error).__name__}: {error}"
        if len(self._seen) >= self.MAX_REMEMBERED:
            self._seen.clear()
        log.error(
            "%s (%s); retrying in %.1f s",
            what,
            kind,
            retry_seconds,
            exc_info=error if kind not in self._seen else None,
        )
        self._seen.add(kind)


# ---------------------------------------------------------------- one file, any source


async def ingest_file(
    path: Path,
    store: BlobStore,
    ctx: ServiceContext,
    *,
    source: str,
    uri: str,
    filename: str | None = None,
    within: Path | None = None,
) -> IngestResult:
    """Check, store, record and announce one local file (``uri``: where it came from).

    ``filename`` defaults to the path's name; ``within``: refuse a path that leads outside it.
    """
    max_bytes = ctx.settings.max_replay_bytes

    def checked_upload() -> ReplayUploaded:
        if within is not None:
            resolve_inside(within, path)
        return upload_event(path, store, max_bytes, source, filename)

    try:
        event = await asyncio.to_thread(checked_upload)
    except IngestRejected as rejected:
        return await reject(ctx, uri, rejected.reason, source)

    async def record() -> tuple[bool, list[asyncpg.Record]]:
        async with ctx.pool.acquire() as conn:
            known = not await db.insert_replay(conn, event)
            return known, await db.replay_states(conn, [event.replay_id]) if known else []

    known, rows = await ctx.retry(record, f"recording {event.replay_id[:12]}")  # waits out Postgres
    if known:
        return await known_content(event, rows[0] if rows else None, store, ctx, source)
    await publish(event, ctx)
    count_file(source, "new")
    log.info("ingested %s as %s", shown(event.filename), event.replay_id[:12])
    return IngestResult("new", event.replay_id, event=event)


async def known_content(
    event: ReplayUploaded,
    row: asyncpg.Record | None,
    store: BlobStore,
    ctx: ServiceContext,
    source: str,
) -> IngestResult:
    """A file whose content is known: resumed if its replay is stranded, else a duplicate."""
    if row is not None:
        state = ReplayState.from_row(row)
        plan = plan_redrive(state, ctx.settings.reconcile_after_seconds)
        if plan.topic is not None and await redrive(ctx, store, state, plan):
            count_file(source, "resumed")
            log.info("known content %s: resumed (%s)", event.replay_id[:12], plan.why)
            return IngestResult("resumed", event.replay_id, event=event)
    metrics.INGEST_DUPLICATES.inc()
    count_file(source, "duplicate")
    log.info("duplicate content %s (%s): skipped", event.replay_id[:12], event.filename)
    return IngestResult("duplicate", event.replay_id, event=event)


async def ingest_path(
    path: Path, store: BlobStore, ctx: ServiceContext, source: str = "watch"
) -> ReplayUploaded | None:
    """One local file; the event if its content was new, else None (duplicate or rejected)."""
    result = await ingest_file(path, store, ctx, source=source, uri=path.as_uri())
    return result.event if result.outcome == "new" else None


async def reject(ctx: ServiceContext, uri: str, reason: str, source: str) -> IngestResult:
    """Dead-letter a file refused at ingest (``replay.failed``, stage ``ingest``)."""
    count_file(source, "rejected")
    replay_id = rejection_id(uri)
    await ctx.fail_replay(replay_id, "ingest", reason, "IngestRejected", uri)
    return IngestResult("rejected", replay_id, reason)


def count_file(source: str, outcome: Outcome) -> None:
    """A file dealt with; also one in of the ingestor's events (as ``files:<source>``), against
    which its errors are measured (the HighErrorRate alert)."""
    metrics.INGEST_FILES.labels(source, outcome).inc()
    metrics.EVENTS_IN.labels(NAME, f"files:{source}").inc()


async def publish(event: ReplayUploaded, ctx: ServiceContext) -> None:
    await ctx.producer.send(REPLAY_UPLOADED, event)

    async def record() -> None:
        async with ctx.pool.acquire() as conn:
            # the parser may have dealt with it already: its status stands
            await db.set_status(
                conn, event.replay_id, "ingest", "uploaded", only_from=("received",)
            )

    await ctx.retry(record, f"recording {event.replay_id[:12]} as announced")


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


async def _record(
    ctx: ServiceContext, uri: str, etag: str, size: int, source: str, result: IngestResult
) -> None:
    async with ctx.pool.acquire() as conn:
        await db.record_ingested_object(
            conn,
            db.IngestedObject(
                uri, etag, size, source, result.outcome, result.replay_id, result.reason
            ),
        )


# ---------------------------------------------------------------- the bucket


@contextlib.contextmanager
def _download_dir(ctx: ServiceContext) -> Iterator[Path]:
    """A private temp folder beside the blob store (same file system, cleaned up after)."""
    root = ctx.settings.blob_dir / "downloads"
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        yield Path(tmp)


async def ingest_object(
    bucket: Bucket,
    item: ObjectInfo,
    store: BlobStore,
    ctx: ServiceContext,
    source: str,
    filename: str | None = None,
) -> IngestResult | None:
    """Fetch one object version and ingest it, then record it in ``ingest_objects``.

    A hostile key or an oversize object is rejected without being fetched. None if the object
    was deleted or replaced since it was listed (the next listing shows the new version).
    """
    uri = bucket.uri(item.key)
    try:
        result = await _fetch_and_ingest(bucket, item, store, ctx, source, filename)
    except IngestRejected as rejected:
        result = await reject(ctx, uri, rejected.reason, source)
    if result is not None:
        await _record(ctx, uri, item.etag, item.size, source, result)
    return result


async def _fetch_and_ingest(
    bucket: Bucket,
    item: ObjectInfo,
    store: BlobStore,
    ctx: ServiceContext,
    source: str,
    filename: str | None,
) -> IngestResult | None:
    name = check_name(item.key)
    check_size(item.size, ctx.settings.max_replay_bytes)
    with _download_dir(ctx) as tmp:
        local = tmp / "object"
        max_bytes = ctx.settings.max_replay_bytes
        if not await asyncio.to_thread(bucket.download, item, local, max_bytes):
            return None
        return await ingest_file(
            local, store, ctx, source=source, uri=bucket.uri(item.key), filename=filename or name
        )


async def poll_bucket(
    bucket: Bucket, store: BlobStore, ctx: ServiceContext, errors: ErrorLog | None = None
) -> list[IngestResult]:
    """Ingest every object version under the prefix not yet in ``ingest_objects``; an object
    that fails for another reason than a refusal is left for the next listing."""
    prefix, poll = ctx.settings.s3_prefix, ctx.settings.s3_poll_seconds
    errors = errors or ErrorLog()
    results: list[IngestResult] = []
    start_after: str | None = None
    while not ctx.stop.is_set():
        page = await asyncio.to_thread(bucket.page, prefix, start_after, LISTING_PAGE)
        if not page:
            break
        async with ctx.pool.acquire() as conn:
            seen = await db.ingested_versions(conn, [bucket.uri(item.key) for item in page])
        for item in page:
            if (bucket.uri(item.key), item.etag) in seen or ctx.stop.is_set():
                continue
            try:
                result = await ingest_object(bucket, item, store, ctx, "s3")
            except BucketUnavailable:
                raise
            except Exception as error:  # unrecorded, so the next listing offers it again
                errors.report(f"could not ingest {shown(bucket.uri(item.key))}", error, poll)
                continue
            if result is not None:
                results.append(result)
        if len(page) < LISTING_PAGE:
            break
        start_after = page[-1].key
    return results


async def watch_bucket(bucket: Bucket, store: BlobStore, ctx: ServiceContext) -> None:
    log.info(
        "watching %s every %.1fs", bucket.uri(ctx.settings.s3_prefix), ctx.settings.s3_poll_seconds
    )
    last_error = ""
    errors = ErrorLog()
    while not ctx.stop.is_set():
        try:
            await poll_bucket(bucket, store, ctx, errors)
            last_error = ""
        except BucketUnavailable as error:
            if str(error) != last_error:  # once per outage, not once per poll
                log.error("%s; retrying every %.1fs", error, ctx.settings.s3_poll_seconds)
            last_error = str(error)
        except Exception as error:  # the listing's bookkeeping (Postgres down, say)
            errors.report("could not list the bucket", error, ctx.settings.s3_poll_seconds)
        await sleep_unless_stopped(ctx.stop, ctx.settings.s3_poll_seconds)


# ---------------------------------------------------------------- replay.submitted


class Submissions:
    """Handles ``replay.submitted``: fetch what the URI points at, then :func:`ingest_file`."""

    def __init__(self, ctx: ServiceContext, store: BlobStore, bucket: Bucket | None) -> None:
        self.ctx = ctx
        self.store = store
        self.bucket = bucket

    async def handle(self, event: ReplaySubmitted) -> None:
        try:
            filename = check_name(event.filename)
            scheme = urlparse(event.uri).scheme
            if scheme == "s3":
                await self._take_object(event, filename)
            elif scheme == "file":
                await self._take_file(event, filename)
            else:
                raise IngestRejected(f"unsupported URI {shown(event.uri)}: use s3:// or file://")
        except IngestRejected as rejected:
            await reject(self.ctx, event.uri, rejected.reason, event.source)

    async def _take_object(self, event: ReplaySubmitted, filename: str) -> None:
        if self.bucket is None:
            raise IngestRejected("an s3:// URI, but no bucket is configured (RLIMPACT_S3_BUCKET)")
        name, key = parse_s3_uri(event.uri)
        if name != self.bucket.name:
            raise IngestRejected(f"bucket {shown(name)} is not the configured {self.bucket.name!r}")
        check_name(key)
        item = await asyncio.to_thread(self.bucket.stat, key)
        if item is None:
            raise IngestRejected(f"no object at {shown(event.uri)}")
        uri = self.bucket.uri(key)
        async with self.ctx.pool.acquire() as conn:
            if (uri, item.etag) in await db.ingested_versions(conn, [uri]):
                log.info("%s was already taken in", shown(uri))
                return
        await ingest_object(self.bucket, item, self.store, self.ctx, event.source, filename)

    async def _take_file(self, event: ReplaySubmitted, filename: str) -> None:
        path = resolve_inside(self.ctx.settings.upload_dir, uri_to_path(event.uri))
        uri = path.as_uri()
        if not path.is_file():
            async with self.ctx.pool.acquire() as conn:
                if await db.ingested_versions(conn, [uri]):
                    log.info("%s was already taken in", shown(uri))
                    return  # a redelivery: the file went once it was taken in
            raise IngestRejected(f"no such file: {shown(uri)}")
        size = path.stat().st_size
        result = await ingest_file(
            path, self.store, self.ctx, source=event.source, uri=uri, filename=filename
        )
        await _record(self.ctx, uri, "", size, event.source, result)
        if result.outcome != "rejected":  # a rejected file stays for inspection
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # rlimpact upload's per-file folder, once empty


# ---------------------------------------------------------------- the service


async def watch_folder(store: BlobStore, ctx: ServiceContext) -> None:
    """Ingest what lands in the watched folder. No file can stop the loop: an unfit one is
    dead-lettered once (per path, size and mtime), and one whose ingest fails otherwise (a
    dependency down, say) is tried again later, while the others go on."""
    inbox = ctx.settings.inbox_dir.absolute()
    inbox.mkdir(parents=True, exist_ok=True)
    watcher = FolderWatcher(inbox)
    errors = ErrorLog()
    log.info("watching %s", inbox)
    while not ctx.stop.is_set():
        for path in await asyncio.to_thread(watcher.poll):
            if ctx.stop.is_set():
                break
            try:
                await ingest_file(path, store, ctx, source="watch", uri=path.as_uri(), within=inbox)
            except Exception as error:
                delay = watcher.retry_later(path)
                errors.report(f"could not ingest {shown(str(path))}", error, delay)
            else:
                watcher.succeeded(path)
        await sleep_unless_stopped(ctx.stop, ctx.settings.watch_interval_seconds)


async def run(ctx: ServiceContext) -> None:
    store = open_blob_store(ctx.settings)
    if recovered := await republish_unannounced(ctx):
        log.info("announced %d replays left unannounced by an earlier run", recovered)
    bucket = Bucket(ctx.settings) if ctx.settings.s3_bucket else None
    submissions = Submissions(ctx, store, bucket)
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(reconcile_forever(ctx, store))
        tasks.create_task(watch_folder(store, ctx))
        if bucket is not None:
            tasks.create_task(watch_bucket(bucket, store, ctx))
        tasks.create_task(
            consume(
                ctx.settings,
                NAME,
                REPLAY_SUBMITTED,
                ReplaySubmitted,
                submissions.handle,
                ctx.producer,
                stop=ctx.stop,
            )
        )


def main() -> None:
    run_service(NAME, run)


if __name__ == "__main__":
    main()
