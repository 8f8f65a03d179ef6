"""Parse-stage throughput: rlimpact's parser against raw subtr-actor and against boxcars'
decoding alone, side by side in one run.

    .venv/bin/python bench/parse.py [--workers 1 2] [--rounds 3] [--limit N] [--replays-dir DIR]

Every side gets every file of the corpus (``$RLIMPACT_REPLAYS_DIR/corpus``) through the same
harness, a process pool of W workers, warmed up before timing:

- **rlimpact**: the parser service's whole stage per replay, ``parse_to_store``: check the
  bytes' sha256, decode, build frames, validate, write the frames file (``shared/frames.py``).
- **subtr-actor**: ``subtr_actor.get_ndarray_with_info_from_replay_filepath`` with the ball and
  player columns the project needs (rigid bodies, boost, jump, demolition), at the same fps;
  nothing written.
- **boxcars**: ``rlimpact_native.decode_only``: read the file and decode it as the extractor
  does (boxcars 0.13, CRC checked, network data included), then drop it: what no parser built on
  boxcars can undercut.

The sides take turns, ``--rounds`` times each, and each keeps its fastest round (the machine
may be busy). Printed per side and W: files that produced frames (decoded, for boxcars), MB/s
and replays/s over all files, per core (divided by W), and MB per second of the workers' CPU
time (per core too, and what other load on the machine disturbs least); then, by wall time and
by CPU time, the ratios of rlimpact's MB/s to subtr-actor's (over all files and over the files
both parse) and rlimpact's MB/s as a share of boxcars'. A rejected file counts as processed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
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
    cpu_seconds: float  # of the worker process: what a busy machine disturbs least


def _timed(path: Path, work: Callable[[], object], errors: type[Exception]) -> FileResult:
    """Run ``work`` on one file; an ``errors`` exception means the file was rejected."""
    start, cpu = time.perf_counter(), time.process_time()
    try:
        work()
        ok = True
    except errors:
        ok = False
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    return FileResult(path.name, path.stat().st_size, ok, seconds, cpu_seconds)


def _rlimpact(path: Path, out_dir: Path) -> FileResult:
    from services.parser.parse import ReplayParseError

    store = FileBlobStore(out_dir)
    replay_id = sha256_file(path)
    uri = store.put_file("replays", replay_id, ".replay", path)  # as the ingestor stores it
    work = partial(parse_to_store, uri, replay_id, FPS, store, ValidationRules())
    return _timed(path, work, ReplayParseError)


def _subtr_actor(path: Path, _: Path) -> FileResult:
    import subtr_actor

    work = partial(
        subtr_actor.get_ndarray_with_info_from_replay_filepath,
        str(path),
        global_feature_adders=SUBTR_GLOBAL,
        player_feature_adders=SUBTR_PLAYER,
        fps=FPS,
        dtype="float32",
    )
    return _timed(path, work, Exception)  # it raises plain Exceptions for undecodable replays


def _boxcars(path: Path, _: Path) -> FileResult:
    import rlimpact_native

    return _timed(
        path, lambda: rlimpact_native.decode_only(path.read_bytes()), rlimpact_native.DecodeError
    )


SIDES: dict[str, Callable[[Path, Path], FileResult]] = {
    "rlimpact": _rlimpact,
    "subtr-actor": _subtr_actor,
    "boxcars": _boxcars,
}


def _warm(_: int) -> None:
    import subtr_actor  # noqa: F401

    import services.parser.service  # noqa: F401


@dataclass(frozen=True)
class Run:
    results: list[FileResult]
    wall_seconds: float

    def ok_names(self) -> set[str]:
        return {r.name for r in self.results if r.ok}

    def _chosen(self, names: set[str] | None) -> list[FileResult]:
        return [r for r in self.results if names is None or r.name in names]

    def throughput(self, names: set[str] | None = None) -> tuple[float, float]:
        """(MB/s, replays/s) of the wall time, scaled to a subset by its share of the time."""
        chosen = self._chosen(names)
        share = sum(r.seconds for r in chosen) / sum(r.seconds for r in self.results)
        wall = self.wall_seconds * share
        return sum(r.size for r in chosen) / 1e6 / wall, len(chosen) / wall

    def cpu_throughput(self, names: set[str] | None = None) -> float:
        """MB per second of the workers' CPU time: MB/s per core, however busy the machine."""
        chosen = self._chosen(names)
        return sum(r.size for r in chosen) / 1e6 / sum(r.cpu_seconds for r in chosen)


def run(
    parse: Callable[[Path, Path], FileResult],
    files: list[Path],
    pool: ProcessPoolExecutor,
    out: Path,
) -> Run:
    start = time.perf_counter()
    results = list(pool.map(parse, files, [out] * len(files), chunksize=1))
    return Run(results, time.perf_counter() - start)


def fastest_runs(files: list[Path], workers: int, rounds: int) -> dict[str, Run]:
    """Each side's fastest of ``rounds`` runs, the sides taking turns in one warm pool."""
    best: dict[str, Run] = {}
    with ProcessPoolExecutor(workers) as pool, tempfile.TemporaryDirectory() as tmp:
        list(pool.map(_warm, range(workers * 2)))
        for _ in range(rounds):
            for name, parse in SIDES.items():
                result = run(parse, files, pool, Path(tmp))
                if name not in best or result.wall_seconds < best[name].wall_seconds:
                    best[name] = result
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3, help="runs per side (fastest kept)")
    parser.add_argument("--limit", type=int, help="only the first N files (a quick run)")
    parser.add_argument("--replays-dir", type=Path, default=get_settings().replays_dir)
    args = parser.parse_args()
    files = sorted((args.replays_dir / "corpus").glob("*.replay"))[: args.limit]
    total_mb = sum(f.stat().st_size for f in files) / 1e6
    print(f"{len(files)} files, {total_mb:.1f} MB, {FPS:g} fps, fastest of {args.rounds} rounds")
    header = f"{'parser':<12} {'W':>2} {'frames':>7} {'MB/s':>7} {'rep/s':>7} {'MB/s/core':>10}"
    header += f" {'rep/s/core':>11} {'MB/CPU-s':>9}"
    for workers in args.workers:
        runs = fastest_runs(files, workers, args.rounds)
        print(f"\n{header}")
        for name, result in runs.items():
            mbs, rps = result.throughput()
            print(
                f"{name:<12} {workers:>2} {len(result.ok_names()):>7} {mbs:>7.2f} {rps:>7.2f}"
                f" {mbs / workers:>10.2f} {rps / workers:>11.2f} {result.cpu_throughput():>9.2f}"
            )
        print_ratios(runs, workers)


def _wall_rate(run: Run, names: set[str] | None = None) -> float:
    return run.throughput(names)[0]


RATES: dict[str, Callable[[Run, set[str] | None], float]] = {
    "wall": _wall_rate,
    "CPU": Run.cpu_throughput,
}


def print_ratios(runs: dict[str, Run], workers: int) -> None:
    ours, theirs, decode = runs["rlimpact"], runs["subtr-actor"], runs["boxcars"]
    both = ours.ok_names() & theirs.ok_names()
    for clock, rate in RATES.items():
        print(
            f"{clock:>4} time, W={workers}: rlimpact/subtr-actor MB/s "
            f"{rate(ours, None) / rate(theirs, None):.2f}x over all files, "
            f"{rate(ours, both) / rate(theirs, both):.2f}x over the {len(both)} files both "
            f"parse; rlimpact at {rate(ours, None) / rate(decode, None):.0%} of boxcars' "
            "decoding alone"
        )


if __name__ == "__main__":
    main()
