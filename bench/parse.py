"""Parse-stage throughput: rlimpact's parser against raw subtr-actor, side by side in one run.

    .venv/bin/python bench/parse.py [--workers 1 2] [--limit N] [--replays-dir DIR]

Both sides get every file of the corpus (``$RLIMPACT_REPLAYS_DIR/corpus``) through the same
harness, a process pool of W workers, warmed up before timing:

- **rlimpact**: the parser service's whole stage per replay, ``parse_to_store``: check the
  bytes' sha256, decode, build frames, validate, write the ``.npz`` frames file.
- **subtr-actor**: ``subtr_actor.get_ndarray_with_info_from_replay_filepath`` with the ball and
  player columns the project needs (rigid bodies, boost, jump, demolition), at the same fps;
  nothing written.

Printed per side and W: files that produced frames, MB/s and replays/s over all files, and per
core (divided by W); then rlimpact / subtr-actor ratios, over all files and over the files both
parse. A rejected file counts as processed for the throughput.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from services.parser.service import parse_to_store
from shared.settings import ValidationRules, get_settings
from shared.storage import FileBlobStore, sha256_file

FPS = 10.0
SUBTR_GLOBAL = ["BallRigidBody", "CurrentTime", "SecondsRemaining"]
SUBTR_PLAYER = ["PlayerRigidBody", "PlayerBoost", "PlayerAnyJump", "PlayerDemolishedBy"]


@dataclass(frozen=True)
class FileResult:
    name: str
    size: int
    ok: bool
    seconds: float


def _rlimpact(path: Path, out_dir: Path) -> FileResult:
    from services.parser.parse import ReplayParseError

    store = FileBlobStore(out_dir)
    replay_id = sha256_file(path)
    uri = store.put_file("replays", replay_id, ".replay", path)  # as the ingestor stores it
    start = time.perf_counter()
    try:
        parse_to_store(uri, replay_id, FPS, store, ValidationRules())
        ok = True
    except ReplayParseError:
        ok = False
    return FileResult(path.name, path.stat().st_size, ok, time.perf_counter() - start)


def _subtr_actor(path: Path, _: Path) -> FileResult:
    import subtr_actor

    start = time.perf_counter()
    try:
        subtr_actor.get_ndarray_with_info_from_replay_filepath(
            str(path),
            global_feature_adders=SUBTR_GLOBAL,
            player_feature_adders=SUBTR_PLAYER,
            fps=FPS,
            dtype="float32",
        )
        ok = True
    except Exception:  # the extension raises plain Exceptions for undecodable replays
        ok = False
    return FileResult(path.name, path.stat().st_size, ok, time.perf_counter() - start)


def _warm(_: int) -> None:
    import subtr_actor  # noqa: F401

    import services.parser.service  # noqa: F401


@dataclass(frozen=True)
class Run:
    results: list[FileResult]
    wall_seconds: float

    def ok_names(self) -> set[str]:
        return {r.name for r in self.results if r.ok}

    def throughput(self, names: set[str] | None = None) -> tuple[float, float]:
        """(MB/s, replays/s) of the wall time, scaled to a subset by its share of CPU time."""
        chosen = [r for r in self.results if names is None or r.name in names]
        share = sum(r.seconds for r in chosen) / sum(r.seconds for r in self.results)
        wall = self.wall_seconds * share
        return sum(r.size for r in chosen) / 1e6 / wall, len(chosen) / wall


def run(
    parse: Callable[[Path, Path], FileResult], files: list[Path], workers: int, out: Path
) -> Run:
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_warm, range(workers * 2)))
        start = time.perf_counter()
        results = list(pool.map(parse, files, [out] * len(files), chunksize=1))
        return Run(results, time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--limit", type=int, help="only the first N files (a quick run)")
    parser.add_argument("--replays-dir", type=Path, default=get_settings().replays_dir)
    args = parser.parse_args()
    files = sorted((args.replays_dir / "corpus").glob("*.replay"))[: args.limit]
    total_mb = sum(f.stat().st_size for f in files) / 1e6
    print(f"{len(files)} files, {total_mb:.1f} MB, {FPS:g} fps")
    header = f"{'parser':<12} {'W':>2} {'frames':>7} {'MB/s':>7} {'rep/s':>7} {'MB/s/core':>10}"
    header += f" {'rep/s/core':>11}"
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as tmp:
            ours = run(_rlimpact, files, workers, Path(tmp))
            theirs = run(_subtr_actor, files, workers, Path(tmp))
        print(f"\n{header}")
        for name, result in (("rlimpact", ours), ("subtr-actor", theirs)):
            mbs, rps = result.throughput()
            print(
                f"{name:<12} {workers:>2} {len(result.ok_names()):>7} {mbs:>7.2f} {rps:>7.2f}"
                f" {mbs / workers:>10.2f} {rps / workers:>11.2f}"
            )
        both = ours.ok_names() & theirs.ok_names()
        ratio_all = ours.throughput()[0] / theirs.throughput()[0]
        ratio_both = ours.throughput(both)[0] / theirs.throughput(both)[0]
        print(
            f"ratio rlimpact/subtr-actor (MB/s, W={workers}): {ratio_all:.2f} over all files, "
            f"{ratio_both:.2f} over the {len(both)} files both parse"
        )


if __name__ == "__main__":
    main()
