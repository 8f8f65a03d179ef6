"""The live scorer's CPU per frame, in-process (no Kafka), with and without the state
snapshots, side by side in one run:

- ``scoring``: the live scorer alone;
- ``scoring + snapshots``: the same, plus each match's snapshot encoded every
  ``--snapshot-seconds`` of game time, as the live service sends them to ``live.state``.

    .venv/bin/python bench/live_state.py [--matches 50] [--per-poll 5] [--rounds 3]
                                         [--against REV]

With ``--against REV`` the variants are instead ``scoring`` at the commit REV (its tree from
``git archive``) and ``scoring`` with this checkout's code, each round in a fresh process of
either, alternating.

N matches play the same replay's SOS feed (through the bridge's own SOS mapping), frames
interleaved as independent games; each poll scores ``--per-poll`` frames of as many matches,
as the live service's polls do at many matches. Variants alternate round by round (so that
other load on the machine falls on all of them alike), each round scoring ``--frames`` frames
per match after a warm-up of 15 s of play; the script prints each variant's median CPU time
per frame (``time.process_time``: this process's CPU, whatever else runs) and its ratio to
the first.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from services.bridge.simulator import PlaybackOptions, sos_messages
from services.bridge.sos import SosSession
from services.live import snapshot
from services.live.scorer import LiveScorer
from services.live.state import ScoringModel
from services.parser.parse import parse_replay_file
from shared.events import LiveFrame, utcnow
from shared.model import ImpactModel
from shared.settings import REPO_ROOT, Settings

RATE = 30.0
WARMUP_FRAMES = int(15 * RATE)


def feed(replay: Path, seconds: float) -> list[LiveFrame]:
    """One match's frames as the bridge makes them from the SOS feed."""
    parsed = parse_replay_file(replay, replay.stem, RATE)
    session, frames = SosSession(), []
    for _, message in sos_messages(parsed, "bench", PlaybackOptions(max_seconds=seconds)):
        frame = session.handle(json.dumps(message), utcnow())
        if isinstance(frame, LiveFrame) and frame.status == "playing":
            frames.append(frame)
    return frames


class Variant:
    def __init__(self, name: str, snapshot_every: int | None) -> None:
        self.name, self.snapshot_every = name, snapshot_every
        self.per_frame_us: list[float] = []


def play(
    variant: Variant,
    matches: list[list[LiveFrame]],
    model: ScoringModel,
    per_poll: int,
    frames: range,
) -> None:
    """Score ``frames`` of every match (after the warm-up frames, not timed) with a fresh
    scorer; record the CPU time per frame of the timed part."""
    scorer, offsets = LiveScorer(), [0] * len(matches)
    for i in range(WARMUP_FRAMES):
        _poll(scorer, matches, model, per_poll, i, offsets, None)
    started, scored = time.process_time(), 0
    for i in frames:
        scored += _poll(scorer, matches, model, per_poll, i, offsets, variant.snapshot_every)
    variant.per_frame_us.append((time.process_time() - started) / scored * 1e6)


def _poll(
    scorer: LiveScorer,
    matches: list[list[LiveFrame]],
    model: ScoringModel,
    per_poll: int,
    i: int,
    offsets: list[int],
    snapshot_every: int | None,
) -> int:
    """Frame ``i`` of every match, ``per_poll`` matches per scoring call."""
    for first in range(0, len(matches), per_poll):
        group = range(first, min(first + per_poll, len(matches)))
        batch = [matches[k][i] for k in group]
        positions = [(k % 6, offsets[k] + i) for k in group]
        scorer.score(batch, model, 0.0, positions)
        if snapshot_every is not None and i % snapshot_every == 0:
            for k in group:
                snapshot.encode(scorer.matches[f"m{k}"])
    return len(matches)


def main() -> None:
    default_replay = Settings().replays_dir / "corpus" / "boxcars-00bb.replay"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matches", type=int, default=50)
    parser.add_argument("--per-poll", type=int, default=5, help="matches per scoring call")
    parser.add_argument("--frames", type=int, default=150, help="timed frames per match")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--snapshot-seconds", type=float, default=2.0)
    parser.add_argument("--replay", type=Path, default=default_replay)
    parser.add_argument("--against", help="a commit: its scoring against this checkout's")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.against:
        return against(args)
    frames = feed(args.replay, (WARMUP_FRAMES + args.frames) / RATE + 1)
    model_file = REPO_ROOT / "models" / "default" / "impact.onnx"
    impact = ImpactModel(model_file)
    model = ScoringModel(impact, None, impact.version)
    matches = [
        [f.model_copy(update={"match_id": f"m{k}"}) for f in frames] for k in range(args.matches)
    ]
    every = max(1, round(args.snapshot_seconds * RATE))
    variants = [
        Variant("scoring", snapshot_every=None),
        Variant("scoring + snapshots", snapshot_every=every),
    ]
    timed = range(WARMUP_FRAMES, WARMUP_FRAMES + args.frames)
    if args.child:  # one round of scoring alone, for --against
        play(variants[0], matches, model, args.per_poll, timed)
        print(variants[0].per_frame_us[0])
        return
    print(
        f"{args.matches} matches, {args.per_poll} per scoring call, {args.frames} timed frames "
        f"each, {args.rounds} rounds, snapshots every {args.snapshot_seconds:g} s"
    )
    runs: list[Callable[[], None]] = []
    for _ in range(args.rounds):
        for variant in variants:
            runs.append(lambda v=variant: play(v, matches, model, args.per_poll, timed))
    for run in runs:
        run()
    report(variants)


def against(args: argparse.Namespace) -> None:
    """Rounds of scoring alone in a process of REV's code and one of this checkout's, in turn."""
    options = [
        *("--matches", str(args.matches), "--per-poll", str(args.per_poll)),
        *("--frames", str(args.frames), "--replay", str(args.replay), "--child"),
    ]
    with tempfile.TemporaryDirectory(prefix="live-state-") as folder:
        tree = Path(folder)
        archive = subprocess.run(
            ["git", "archive", args.against], cwd=REPO_ROOT, check=True, capture_output=True
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tree, filter="data")
        variants = [
            Variant(f"scoring at {args.against}", None),
            Variant("scoring (this code)", None),
        ]
        print(
            f"{args.matches} matches, {args.per_poll} per scoring call, {args.frames} timed "
            f"frames each, {args.rounds} rounds, each in a fresh process"
        )
        for _ in range(args.rounds):
            for variant, root in zip(variants, (tree, REPO_ROOT), strict=True):
                child = subprocess.run(
                    [sys.executable, str(Path(__file__).resolve()), *options],
                    cwd=root,
                    env={**os.environ, "PYTHONPATH": str(root)},
                    check=True,
                    capture_output=True,
                    text=True,
                )
                variant.per_frame_us.append(float(child.stdout.split()[-1]))
    report(variants)


def report(variants: list[Variant]) -> None:
    base = statistics.median(variants[0].per_frame_us)
    print("variant                 CPU us/frame (median)   rounds              ratio")
    for variant in variants:
        median = statistics.median(variant.per_frame_us)
        rounds = " ".join(f"{us:.0f}" for us in variant.per_frame_us)
        print(f"{variant.name:<22}  {median:>12.0f}            {rounds:<18}  {median / base:.2f}")


if __name__ == "__main__":
    main()
