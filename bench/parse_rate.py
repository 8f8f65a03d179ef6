"""Parse rate of the native extractor on the corpus: what parses, why the rest is rejected.

    .venv/bin/python bench/parse_rate.py [--replays-dir DIR]

Parses and validates every file of ``MANIFEST.tsv`` once, in this process, as the parser
service does, and prints: how many corpus files parse, of those boxcars can decode; each
rejection reason (decode error or validation rule) with its count; header goals (as counted in
the manifest) and how many got a time; ball touches; milliseconds per replay, and of those what
boxcars' decoding alone takes (``rlimpact_native.decode_only`` on the same bytes). Throughput
against subtr-actor is ``bench/parse.py``'s job.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import rlimpact_native
from tqdm import tqdm

from services.parser.parse import ReplayParseError
from services.parser.validate import parse_valid_replay
from shared.settings import get_settings

FPS = 10.0


@dataclass
class Tally:
    files: int = 0
    parsed: int = 0
    header_goals: int = 0
    timed_goals: int = 0
    touches: int = 0
    seconds: float = 0.0
    decode_seconds: float = 0.0


def _reason_kind(reason: str) -> str:
    """A rejection reason without the file-specific numbers, to group by."""
    return re.sub(r"\d+", "N", reason.split(" (")[0])[:110]


def _decode_seconds(path: Path) -> float:
    data = path.read_bytes()
    start = time.perf_counter()
    with contextlib.suppress(rlimpact_native.DecodeError):
        rlimpact_native.decode_only(data)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replays-dir", type=Path, default=get_settings().replays_dir)
    args = parser.parse_args()
    manifest = args.replays_dir / "MANIFEST.tsv"
    if not manifest.exists():
        parser.error(f"no MANIFEST.tsv in {args.replays_dir} (set --replays-dir)")
    with manifest.open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    rules = get_settings().validation
    tallies = {"corpus": Tally(), "bad": Tally()}
    reasons: Counter[tuple[str, str]] = Counter()
    for row in tqdm(rows, desc="parsing", unit="replay"):
        path = args.replays_dir / row["file"]
        tally = tallies[path.parent.name]
        tally.files += 1
        tally.decode_seconds += _decode_seconds(path)
        start = time.perf_counter()
        try:
            replay = parse_valid_replay(path, row["sha256"], FPS, rules)
        except ReplayParseError as error:
            tally.seconds += time.perf_counter() - start
            reasons[(path.parent.name, _reason_kind(error.reason))] += 1
        else:
            tally.seconds += time.perf_counter() - start
            tally.parsed += 1
            if row["goals_in_header"]:  # the manifest's count, where it has one
                tally.header_goals += int(row["goals_in_header"])
                tally.timed_goals += len(replay.goals)
            tally.touches += len(replay.touches)
    corpus = tallies["corpus"]
    undecodable = sum(
        n
        for (where, kind), n in reasons.items()
        if where == "corpus" and kind.startswith("undecodable")
    )
    decodable = corpus.files - undecodable
    print(
        f"corpus: {corpus.parsed} of {corpus.files} files parse; "
        f"{corpus.parsed} of {decodable} that boxcars decodes "
        f"({100 * corpus.parsed / max(decodable, 1):.1f} %)"
    )
    print(
        f"bad/: {tallies['bad'].files - tallies['bad'].parsed} of {tallies['bad'].files} rejected"
    )
    print("rejections:")
    for (where, kind), n in sorted(reasons.items()):
        print(f"  {n:4d}  {where:6s} {kind}")
    print(
        f"goals: {corpus.timed_goals} of the {corpus.header_goals} header goals of parsed files "
        f"have a time; ball touches: {corpus.touches}"
    )
    for name, tally in tallies.items():
        files = max(tally.files, 1)
        print(
            f"{name}: {1000 * tally.seconds / files:.1f} ms per replay, of which boxcars' "
            f"decoding alone takes {1000 * tally.decode_seconds / files:.1f} ms"
        )


if __name__ == "__main__":
    main()
