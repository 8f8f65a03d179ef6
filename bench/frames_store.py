"""Frames-file candidates side by side: write and read time and size per replay, in one run.

    .venv/bin/python bench/frames_store.py [--limit N] [--repeat R] [--replays-dir DIR]

Parses the corpus files (``$RLIMPACT_REPLAYS_DIR/corpus``, sorted; the first N with --limit)
once, timing the extraction, then writes and reads back every parsed replay R times in each
candidate format: the Arrow IPC file of ``shared/frames.py`` (format 3) uncompressed, with LZ4
and with zstd, and the deflate-compressed ``.npz`` written before (format 2). Printed per
format: megabytes on disk and the share of the arrays' raw size, milliseconds of CPU time per
replay to write and to read (the best of the R rounds; CPU time, which a busy machine disturbs
less than wall time), and the write time as a share of the extraction's.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.parser.parse import ReplayParseError, parse_replay_file
from shared.frames import FRAMES_COMPRESSION, ParsedReplay, save_npz
from shared.settings import get_settings

Writer = Callable[[ParsedReplay, Path], None]


@dataclass(frozen=True)
class Candidate:
    name: str
    write: Writer


def _arrow(compression: str | None) -> Writer:
    return lambda replay, path: replay.save(path, compression)


CANDIDATES = (
    Candidate("arrow, uncompressed", _arrow(None)),
    Candidate("arrow, lz4", _arrow("lz4")),
    Candidate("arrow, zstd", _arrow("zstd")),
    Candidate("npz, deflate (format 2)", save_npz),
)


@dataclass(frozen=True)
class Measured:
    megabytes: float
    write_ms: float
    read_ms: float


def parse_all(files: list[Path]) -> tuple[list[ParsedReplay], float]:
    """The replays that parse, and the extraction's milliseconds per replay (all files)."""
    replays = []
    start = time.process_time()
    for path in files:
        with contextlib.suppress(ReplayParseError):  # rejected files have no frames to store
            replays.append(parse_replay_file(path, "bench"))
    return replays, (time.process_time() - start) * 1000 / len(files)


def measure(candidate: Candidate, replays: list[ParsedReplay], repeat: int, out: Path) -> Measured:
    paths = [out / f"{i}.frames" for i in range(len(replays))]
    writes, reads = [], []
    for _ in range(repeat):
        start = time.process_time()
        for replay, path in zip(replays, paths, strict=True):
            candidate.write(replay, path)
        writes.append(time.process_time() - start)
        start = time.process_time()
        for path in paths:
            ParsedReplay.load(path)
        reads.append(time.process_time() - start)
    megabytes = sum(path.stat().st_size for path in paths) / 1e6
    per_replay = 1000 / len(replays)
    return Measured(megabytes, min(writes) * per_replay, min(reads) * per_replay)


def raw_megabytes(replays: list[ParsedReplay]) -> float:
    arrays = ("time", "seconds_remaining", "ball", "cars", "touches")
    return sum(getattr(r, name).nbytes for r in replays for name in arrays) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="only the first N files (a quick run)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per format (best kept)")
    parser.add_argument("--replays-dir", type=Path, default=get_settings().replays_dir)
    args = parser.parse_args()
    files = sorted((args.replays_dir / "corpus").glob("*.replay"))[: args.limit]
    if not files:
        parser.error(f"no corpus replays in {args.replays_dir} (set --replays-dir)")
    replays, extract_ms = parse_all(files)
    raw = raw_megabytes(replays)
    print(
        f"{len(replays)} of {len(files)} files parse; arrays {raw:.1f} MB; extraction "
        f"{extract_ms:.2f} CPU ms per replay; best of {args.repeat} rounds; "
        f"frames files are written with {FRAMES_COMPRESSION!r}"
    )
    columns = f"{'MB':>7} {'of raw':>7} {'write ms':>9} {'read ms':>8} {'write/extract':>14}"
    print(f"\n{'format':<24} {columns}")
    for candidate in CANDIDATES:
        with tempfile.TemporaryDirectory() as out:
            m = measure(candidate, replays, args.repeat, Path(out))
        print(
            f"{candidate.name:<24} {m.megabytes:>7.1f} {m.megabytes / raw:>7.0%} "
            f"{m.write_ms:>9.2f} {m.read_ms:>8.2f} {m.write_ms / extract_ms:>14.0%}"
        )


if __name__ == "__main__":
    main()
