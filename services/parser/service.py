"""Parser service: parses uploads in worker processes; an unparseable replay is dead-lettered.

Each replay is parsed and validated in a worker process (:mod:`services.parser.workers`) under
a per-replay timeout; a replay that fails to decode, breaks a validation rule, hangs or kills
its worker goes to ``replay.failed`` and the service goes on with the next one.

No event is trusted (:func:`check_upload`): one that names no known replay, or a known replay
with another file's URI, is refused (``events.invalid``) and no replay is touched. The replay's
bytes are read only from inside the blob store, and must hash to its id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from services.parser.parse import ReplayParseError
from services.parser.validate import parse_valid_replay
from services.parser.workers import WorkerPool
from shared import db, metrics
from shared.events import (
    FRAMES_PARSED,
    REPLAY_UPLOADED,
    FramesParsed,
    ReplayUploaded,
)
from shared.frames import FRAMES_SUFFIX
from shared.kafka import consume
from shared.service import ServiceContext, run_service
from shared.settings import ValidationRules
from shared.storage import BlobOutsideStore, BlobStore, open_blob_store, sha256_file

NAME = "parser"
log = logging.getLogger(NAME)
# Statuses past the parse stage: a replay.uploaded for such a replay (a redelivery, or a re-drive
# that crossed the replay's own progress) changes nothing.
PAST_PARSE = ("featurized", "scored")


@dataclass(frozen=True)
class UploadCheck:
    action: Literal["parse", "refuse", "skip"]
    reason: str = ""


def check_upload(event: ReplayUploaded, stored_uri: str | None, status: str | None) -> UploadCheck:
    """What to do with a ``replay.uploaded``, given what Postgres holds for its replay id."""
    if stored_uri is None:
        return UploadCheck("refuse", f"replay {event.replay_id[:12]} is not a known replay")
    if stored_uri != event.uri:
        return UploadCheck(
            "refuse",
            f"replay {event.replay_id[:12]} is stored at {stored_uri!r},"
            f" not at {event.uri[:200]!r}",
        )
    if status in PAST_PARSE:
        return UploadCheck("skip", f"replay {event.replay_id[:12]} is {status} already")
    return UploadCheck("parse")


class ContentMismatch(ReplayParseError):
    """The stored bytes are not those the replay id (their sha256) names."""


def check_content(path: Path, replay_id: str) -> None:
    if (digest := sha256_file(path)) != replay_id:
        raise ContentMismatch(f"the stored bytes hash to {digest[:12]}…, not to the replay id")


def parse_to_store(
    uri: str, replay_id: str, fps: float, store: BlobStore, rules: ValidationRules
) -> FramesParsed:
    """Runs in a worker process: check and parse the stored replay, write its frames file.

    Raises ReplayParseError for a URI outside the store, a missing file, bytes that do not hash
    to ``replay_id``, and replays that do not decode or break a rule; no frames are written then.
    """
    try:
        with store.local_path(uri) as path:
            check_content(path, replay_id)
            parsed = parse_valid_replay(path, replay_id, fps, rules)
    except BlobOutsideStore as error:
        raise ReplayParseError(f"refused: {error}") from error
    except FileNotFoundError as error:
        raise ReplayParseError(f"the stored replay is missing: {error}") from error
    with store.writer("frames", replay_id, FRAMES_SUFFIX) as tmp:
        parsed.save(tmp)
    return FramesParsed(
        replay_id=replay_id,
        frames_uri=store.uri_for("frames", replay_id, FRAMES_SUFFIX),
        n_frames=parsed.n_frames,
        fps=fps,
        team_size=parsed.team_size,
        players=parsed.players,
        goals=parsed.goals,
    )


class Parser:
    def __init__(self, ctx: ServiceContext, workers: WorkerPool) -> None:
        self.ctx = ctx
        self.workers = workers
        self.store = open_blob_store(ctx.settings)

    async def handle(self, event: ReplayUploaded) -> None:
        settings = self.ctx.settings
        async with self.ctx.pool.acquire() as conn:
            stored = await db.stored_replay(conn, event.replay_id)
        check = check_upload(event, stored and stored["uri"], stored and stored["status"])
        if check.action == "refuse":
            await self.ctx.refuse_event(REPLAY_UPLOADED, event, check.reason)
            return
        if check.action == "skip":
            log.info("%s: nothing to do", check.reason)
            return
        try:
            parsed = await self.workers.run(
                parse_to_store,
                event.uri,
                event.replay_id,
                settings.fps,
                self.store,
                settings.validation,
            )
        except ReplayParseError as error:
            await self.ctx.fail_replay(
                event.replay_id, "parse", error.reason, type(error).__name__, event.uri, error.rule
            )
            return
        async with self.ctx.pool.acquire() as conn, conn.transaction():
            await db.replace_players(conn, event.replay_id, parsed.players)
            await db.set_status(
                conn,
                event.replay_id,
                "parse",
                "parsed",
                frames_uri=parsed.frames_uri,
                n_frames=parsed.n_frames,
                team_size=parsed.team_size,
            )
        await self.ctx.producer.send(FRAMES_PARSED, parsed)
        log.info("parsed %s: %d frames", event.replay_id[:12], parsed.n_frames)


def worker_pool(ctx: ServiceContext) -> WorkerPool:
    settings = ctx.settings
    restarts = metrics.WORKER_RESTARTS.labels(NAME)
    return WorkerPool(
        settings.parser_workers,
        settings.parse_timeout_seconds,
        settings.parser_recycle_after,
        on_restart=restarts.inc,
    )


async def run(ctx: ServiceContext) -> None:
    with worker_pool(ctx) as workers:
        await consume(
            ctx.settings,
            NAME,
            REPLAY_UPLOADED,
            ReplayUploaded,
            Parser(ctx, workers).handle,
            ctx.producer,
            batch_size=ctx.settings.parser_workers,
            stop=ctx.stop,
            fail_replay=ctx.replay_failer("parse"),
        )


def main() -> None:
    run_service(NAME, run)


if __name__ == "__main__":
    main()
