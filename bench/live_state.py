"""The live scorer's CPU per frame, in-process (no Kafka), with and without the state
snapshots, side by side in one run:

- ``scoring``: the live scorer alone;
- ``scoring + snapshots``: the same, plus each match's snapshot encoded every
  ``--snapshot-seconds`` of game time, as the live service sends them to ``live.state``.

    .venv/bin/python bench/live_state.py [--matches 50] [--per-poll 5] [--rounds 3]
                                         [--frames-per-poll K] [--against REV]

With ``--frames-per-poll K`` (K > 1) a third variant scores K consecutive frames of each match
per call (what a poll holds when the live service's fetches wait for a few frames). With
``--against REV`` the variants are instead ``scoring`` at the commit REV (its tree from
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
from dataclasses import dataclass
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
    def __init__(self, name: str, snapshot_every: int | None, frames_per_poll: int = 1) -> None:
        self.name, self.snapshot_every = name, snapshot_every
        self.frames_per_poll = frames_per_poll
        self.per_frame_us: list[float] = []


def play(
    variant: Variant,
    matches: list[list[LiveFrame]],
    model: ScoringModel,
    per_poll: int,
    frames: range,
) -> None:
    """Score ``frames`` of every match (after the warm-up frames, not timed) with a fresh
    scorer, ``frames_per_poll`` consecutive frames of each match per scoring call; record the
    CPU time per frame of the timed part."""
    scorer, offsets = LiveScorer(), [0] * len(matches)
    polls = Polls(matches, model, per_poll, variant.frames_per_poll)
    for i in range(0, WARMUP_FRAMES, variant.frames_per_poll):
        polls.poll(scorer, i, offsets, None)
    started, scored = time.process_time(), 0
    for i in range(frames.start, frames.stop, variant.frames_per_poll):
        scored += polls.poll(scorer, i, offsets, variant.snapshot_every)
    variant.per_frame_us.append((time.process_time() - started) / scored * 1e6)


@dataclass(frozen=True)
class Polls:
    matches: list[list[LiveFrame]]
    model: ScoringModel
    per_poll: int  # matches per scoring call
    frames_per_poll: int  # consecutive frames of each

    def poll(
        self, scorer: LiveScorer, i: int, offsets: list[int], snapshot_every: int | None
    ) -> int:
        """Frames ``i`` to ``i + frames_per_poll - 1`` of every match, ``per_poll`` matches per
        scoring call; the number of frames scored."""
        matches, steps = self.matches, range(i, i + self.frames_per_poll)
        for first in range(0, len(matches), self.per_poll):
            group = range(first, min(first + self.per_poll, len(matches)))
            batch = [matches[k][j] for j in steps for k in group]
            positions = [(k % 6, offsets[k] + j) for j in steps for k in group]
            scorer.score(batch, self.model, 0.0, positions)
            if snapshot_every is not None and any(j % snapshot_every == 0 for j in steps):
                for k in group:
                    snapshot.encode(scorer.matches[f"m{k}"])
        return len(matches) * self.frames_per_poll


def main() -> None:
    default_replay = Settings().replays_dir / "corpus" / "boxcars-00bb.replay"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matches", type=int, default=50)
    parser.add_argument("--per-poll", type=int, default=5, help="matches per scoring call")
    parser.add_argument(
        "--frames-per-poll", type=int, default=1, help="consecutive frames of each match per call"
    )
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
    if args.frames_per_poll > 1:
        k = args.frames_per_poll
        variants.append(Variant(f"scoring, {k} frames/call", None, frames_per_poll=k))
    timed = range(WARMUP_FRAMES, WARMUP_FRAMES + args.frames)
    if args.child:  # one round of scoring alone, for --against
        only = Variant("scoring", None, args.frames_per_poll)
        play(only, matches, model, args.per_poll, timed)
        print(only.per_frame_us[0])
        return
    print(f"{calls(args)}, {args.rounds} rounds, snapshots every {args.snapshot_seconds:g} s")
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
        *("--frames-per-poll", str(args.frames_per_poll)),
        *("--frames", str(args.frames), "--replay", str(args.replay), "--child"),
    ]
    with tempfile.TemporaryDirectory(prefix="live-state-") as folder:
        tree = archived(args.against, Path(folder))
        variants = [
            Variant(f"scoring at {args.against}", None),
            Variant("scoring (this code)", None),
        ]
        print(f"{calls(args)}, {args.rounds} rounds, each in a fresh process")
        for _ in range(args.rounds):
            for variant, root in zip(variants, (tree, REPO_ROOT), strict=True):
                output = run_child(Path(__file__), root, options)
                variant.per_frame_us.append(float(output.split()[-1]))
    report(variants)


def archived(rev: str, folder: Path) -> Path:
    """The tree of commit ``rev`` (``git archive``), extracted into ``folder``."""
    archive = subprocess.run(
        ["git", "archive", rev], cwd=REPO_ROOT, check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def run_child(script: Path, root: Path, options: list[str]) -> str:
    """``script`` (of this checkout) run on the code of the tree ``root``; its output."""
    return subprocess.run(
        [sys.executable, str(script.resolve()), *options],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def calls(args: argparse.Namespace) -> str:
    frames = "" if args.against is None else f", {args.frames_per_poll} frame(s) of each"
    return (
        f"{args.matches} matches, {args.per_poll} per scoring call{frames}, {args.frames} "
        "timed frames each"
    )


def report(variants: list[Variant]) -> None:
    base = statistics.median(variants[0].per_frame_us)
    print("variant                 CPU us/frame (median)   rounds              ratio")
    for variant in variants:
        median = statistics.median(variant.per_frame_us)
        rounds = " ".join(f"{us:.0f}" for us in variant.per_frame_us)
        print(f"{variant.name:<22}  {median:>12.0f}            {rounds:<18}  {median / base:.2f}")


if __name__ == "__main__":
    main()
