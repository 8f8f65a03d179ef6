"""Hostile entries in the watched folder, against the stack's own ingestor: each is dead-lettered
once, with its reason, the good replay beside them goes through, and the ingestor lives on.

The entries are removed and the good replay is forgotten by Postgres at the end, so the other
tests' counts stay their own.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import asyncpg
import pytest

from shared.events import REPLAY_FAILED, REPLAY_UPLOADED, ReplayFailed, ReplayUploaded
from tests.integration.conftest import Stack, events_on, wait_for

pytestmark = pytest.mark.integration

TIMEOUT = 120.0


def _hostile_entries(inbox: Path, outside: Path) -> dict[Path, str]:
    """Make them in ``inbox``; each path → what its dead letter's reason must say."""
    raw_name = os.fsencode(inbox) + b"/hostile-\xff\xfe.replay"  # not UTF-8
    with open(raw_name, "wb") as handle:
        handle.write(b"TAGame.Replay_Soccar_TA" * 4)
    entries = {
        Path(os.fsdecode(raw_name)): "is not valid UTF-8",
        inbox / "hostile-loop.replay": "symbolic link loop",
        inbox / "hostile-out.replay": "leads outside",
        inbox / "hostile-dangling.replay": "symbolic link to nothing",
        inbox / "hostile-pipe.replay": "is a FIFO, not a file",
        inbox / "hostile-folder.replay": "is a folder, not a file",
    }
    (inbox / "hostile-loop.replay").symlink_to("hostile-loop.replay")
    (inbox / "hostile-out.replay").symlink_to(outside)
    (inbox / "hostile-dangling.replay").symlink_to(inbox / "no-such.replay")
    os.mkfifo(inbox / "hostile-pipe.replay")
    (inbox / "hostile-folder.replay").mkdir()
    return entries


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


async def test_hostile_entries_are_dead_lettered_once_and_the_rest_flows(
    stack: Stack, pg: asyncpg.Connection, good_replays, tmp_path: Path
):
    inbox = stack.settings.inbox_dir.absolute()
    await wait_for(lambda: asyncio.to_thread(inbox.is_dir), 60, "the ingestor's inbox")
    ingestor = stack.processes["ingestor"]
    outside = tmp_path / "secret.replay"
    outside.write_bytes(b"not for the pipeline")
    good = _pick(good_replays)
    good_copy = inbox / "hostile-neighbour.replay"
    async with (
        events_on(stack, REPLAY_FAILED, ReplayFailed) as failed,
        events_on(stack, REPLAY_UPLOADED, ReplayUploaded) as uploaded,
    ):
        entries = _hostile_entries(inbox, outside)
        shutil.copy(good.path, good_copy)
        try:
            uris = {path.as_uri(): reason for path, reason in entries.items()}

            async def all_dead_lettered() -> bool:
                return set(uris) <= {e.uri for e in failed} and any(
                    e.replay_id == good.sha256 for e in uploaded
                )

            await wait_for(all_dead_lettered, TIMEOUT, "a dead letter for every hostile entry")
            await asyncio.sleep(3.0)  # six more polls: nothing is dead-lettered again
            for uri, reason in uris.items():
                letters = [e for e in failed if e.uri == uri]
                assert len(letters) == 1, (uri, letters)
                assert letters[0].stage == "ingest" and reason in letters[0].reason, letters[0]
            assert ingestor.poll() is None, stack.log("ingestor")[-3000:]
            assert stack.processes["ingestor"] is ingestor, "the same process all along"
        finally:
            for path in [*entries, good_copy]:
                _remove(path)
            await _forget(pg, good.sha256)


def _pick(good_replays):
    """A small 1v1 replay none of the other tests ingest: the collector test takes 3+ players,
    the pipeline and source tests the smallest 30 with goals."""
    by_size = sorted(good_replays, key=lambda r: r.path.stat().st_size)
    theirs = {r.path for r in by_size if (r.goals or 0) >= 1 and r.team_size}
    theirs = set(sorted(theirs, key=lambda p: p.stat().st_size)[:30])
    return next(r for r in by_size if r.team_size == 1 and r.path not in theirs)


async def _forget(pg: asyncpg.Connection, replay_id: str) -> None:
    async def settled() -> bool:
        status = await pg.fetchval("SELECT status FROM replays WHERE id = $1", replay_id)
        return status in ("scored", "failed")

    await wait_for(settled, TIMEOUT, "the good replay to be scored")
    async with pg.transaction():
        await pg.execute("DELETE FROM scores WHERE replay_id = $1", replay_id)
        await pg.execute("DELETE FROM replays WHERE id = $1", replay_id)
