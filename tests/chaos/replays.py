"""The replays each fault scenario sends in, and what must become of each.

Every scenario gets replays of its own (a replay is known by its content hash, so a file sent
twice would be a duplicate, not a new replay in flight): real files from the corpus, ``more``
and ``bad``, plus copies of good files cut short (an upload that broke off), so that every
batch holds a few unparseable replays besides the good ones. What each replay must end as is
decided before the stack sees it, offline, by the parser's own function in the parser's own
worker pool: ``None`` (it parses and validates, so it must be scored) or the reason the parser
gives (it must be ``failed`` with that reason). The suite tests delivery, not parsing.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from pathlib import Path

from services.ingestor.ingest import IngestRejected, check_file
from services.parser.parse import ReplayParseError
from services.parser.validate import parse_valid_replay
from services.parser.workers import WorkerPool
from shared.settings import Settings, ValidationRules
from shared.storage import sha256_file

SOURCES = ("corpus", "more", "bad")
UNPARSEABLE_PER_BATCH = 6
CUT_SHARES = (0.35, 0.5, 0.65, 0.8)  # where the cut-short copies end, as shares of the file


@dataclass(frozen=True)
class Replay:
    path: Path
    sha256: str
    size: int
    failure: str | None  # the parser's reason when it must fail; None when it must be scored

    @property
    def parseable(self) -> bool:
        return self.failure is None


def expected_failure(path: Path, replay_id: str, fps: float, rules: ValidationRules) -> str | None:
    """Runs in a worker: the parser's reason for refusing the file, or None if it parses."""
    try:
        parse_valid_replay(path, replay_id, fps, rules)
    except ReplayParseError as error:
        return error.reason
    return None


def parser_pool(settings: Settings) -> WorkerPool:
    return WorkerPool(2, settings.parse_timeout_seconds, settings.parser_recycle_after)


async def classify(paths: list[Path], settings: Settings, pool: WorkerPool) -> list[Replay]:
    """Each distinct replay among ``paths`` that the ingestor accepts, with its outcome."""
    distinct: dict[str, tuple[Path, int]] = {}
    for path in paths:
        try:
            size = check_file(path, settings.max_replay_bytes)
        except IngestRejected:  # refused before it is a replay: no replays row to check
            continue
        distinct.setdefault(sha256_file(path), (path, size))

    async def one(sha: str, path: Path, size: int) -> Replay:
        try:
            failure = await pool.run(expected_failure, path, sha, settings.fps, settings.validation)
        except ReplayParseError as error:  # a timeout or a crash: the parser fails it so too
            failure = error.reason
        return Replay(path, sha, size, failure)

    return list(await asyncio.gather(*(one(s, p, n) for s, (p, n) in distinct.items())))


def cut_short(replay: Replay, share: float, folder: Path) -> Path:
    """A copy of the first ``share`` of the file's bytes."""
    data = replay.path.read_bytes()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"cut{round(share * 100)}-{replay.path.name}"
    path.write_bytes(data[: max(64, int(len(data) * share))])
    return path


async def plan_batches(
    names: list[str], settings: Settings, work_dir: Path, size: int = 50
) -> dict[str, list[Replay]]:
    """``size`` replays per scenario, none shared: the smallest good files dealt out in turn,
    the corpus's unparseable ones dealt out too, and cut-short copies of good files to make up
    ``UNPARSEABLE_PER_BATCH`` unparseable ones per batch; each batch in a fixed shuffled order.
    """
    files = sorted(
        p for source in SOURCES for p in (settings.replays_dir / source).glob("*.replay")
    )
    with parser_pool(settings) as pool:
        replays = await classify(files, settings, pool)
        good = sorted((r for r in replays if r.parseable), key=lambda r: (r.size, r.sha256))
        bad = sorted((r for r in replays if not r.parseable), key=lambda r: r.path.name)
        per_batch = size - UNPARSEABLE_PER_BATCH
        if len(good) < per_batch * len(names):
            raise ValueError(
                f"{len(names)} scenarios of {per_batch} good replays need"
                f" {per_batch * len(names)}; {settings.replays_dir} has {len(good)}"
            )
        batches = {}
        for i, name in enumerate(names):
            mine = good[: per_batch * len(names)][i :: len(names)]
            natural = bad[i :: len(names)][:UNPARSEABLE_PER_BATCH]
            cut = [
                cut_short(replay, CUT_SHARES[j % len(CUT_SHARES)], work_dir / name)
                for j, replay in enumerate(mine[: UNPARSEABLE_PER_BATCH - len(natural)])
            ]
            batch = [*mine, *natural, *await classify(cut, settings, pool)]
            random.Random(name).shuffle(batch)
            batches[name] = batch
    return batches
