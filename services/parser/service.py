"""Parser service: parses uploads in worker processes; an unparseable replay is dead-lettered."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from services.parser.parse import ReplayParseError, parse_replay_file
from shared import db
from shared.events import (
    FRAMES_PARSED,
    REPLAY_UPLOADED,
    FramesParsed,
    ReplayUploaded,
)
from shared.kafka import consume
from shared.service import ServiceContext, run_service
from shared.storage import BlobStore, uri_to_path

NAME = "parser"
log = logging.getLogger(NAME)
WORKER_RECYCLE_AFTER = 50  # replays per worker process, bounding any leak in the native parser


def parse_to_store(uri: str, replay_id: str, fps: float, blob_dir: Path) -> FramesParsed:
    """Runs in a worker process: parse the stored replay and write its frames file."""
    parsed = parse_replay_file(uri_to_path(uri), replay_id, fps)
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
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.ctx.settings.parser_workers, max_tasks_per_child=WORKER_RECYCLE_AFTER
        )

    async def handle(self, event: ReplayUploaded) -> None:
        settings = self.ctx.settings
        loop = asyncio.get_running_loop()
        try:
            parsed = await loop.run_in_executor(
                self.pool,
                parse_to_store,
                event.uri,
                event.replay_id,
                settings.fps,
                settings.blob_dir,
            )
        except ReplayParseError as error:
            await self.ctx.fail_replay(
                event.replay_id, "parse", error.reason, "ReplayParseError", event.uri
            )
            return
        except BrokenProcessPool:
            self.pool = self._new_pool()
            await self.ctx.fail_replay(
                event.replay_id, "parse", "parser worker process died", "WorkerCrashed", event.uri
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


async def run(ctx: ServiceContext) -> None:
    parser = Parser(ctx)
    try:
        await consume(
            ctx.settings,
            NAME,
            REPLAY_UPLOADED,
            ReplayUploaded,
            parser.handle,
            ctx.producer,
            batch_size=ctx.settings.parser_workers,
            stop=ctx.stop,
        )
    finally:
        parser.pool.shutdown(cancel_futures=True)


def main() -> None:
    run_service(NAME, run)


if __name__ == "__main__":
    main()
