"""Parser service: parses uploads in worker processes; an unparseable replay is dead-lettered.

Each replay is parsed and validated in a worker process (:mod:`services.parser.workers`) under
a per-replay timeout; a replay that fails to decode, breaks a validation rule, hangs or kills
its worker goes to ``replay.failed`` and the service goes on with the next one.
"""

from __future__ import annotations

import logging
from pathlib import Path

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
from shared.kafka import consume
from shared.service import ServiceContext, run_service
from shared.settings import ValidationRules
from shared.storage import BlobStore, uri_to_path

NAME = "parser"
log = logging.getLogger(NAME)


def parse_to_store(
    uri: str, replay_id: str, fps: float, blob_dir: Path, rules: ValidationRules
) -> FramesParsed:
    """Runs in a worker process: parse and validate the stored replay, write its frames file."""
    parsed = parse_valid_replay(uri_to_path(uri), replay_id, fps, rules)
    store = BlobStore(blob_dir)
    with store.writer("frames", replay_id, ".npz") as tmp:
        parsed.save(tmp)
    return FramesParsed(
        replay_id=replay_id,
        frames_uri=store.path_for("frames", replay_id, ".npz").as_uri(),
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

    async def handle(self, event: ReplayUploaded) -> None:
        settings = self.ctx.settings
        try:
            parsed = await self.workers.run(
                parse_to_store,
                event.uri,
                event.replay_id,
                settings.fps,
                settings.blob_dir,
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
                NAME,
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
