"""The CPU per game update of the live path's feed: the simulator (the game, on the scoring
host in ``bench/live.py``) and the bridge, in-process (no sockets, no Kafka), this checkout's
code against another commit's, side by side in one run:

- ``simulator``: N matches of one replay played at once through the simulator's own playback
  (``SimulatedMatch.play``, no client connected, as fast as it goes): the CPU to make each
  ``game:update_state`` message's text;
- ``bridge``: the SOS mapping of each update (``SosSession.handle``) and the encoding of its
  ``LiveFrame`` for ``live.frames``.

    .venv/bin/python bench/live_feed.py --against REV [--matches 10] [--seconds 60]
                                        [--rounds 3]

Each round runs in a fresh process of REV's code (its tree from ``git archive``) or this
checkout's, in turn (so that other load on the machine falls on both alike); the script
prints each one's median CPU time per update (``time.process_time``) and its ratio to REV's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from live_state import archived, run_child

from services.bridge.simulator import PlaybackOptions, build_matches, sos_messages
from services.bridge.sos import SosSession
from services.parser.parse import parse_replay_file
from shared.events import LiveFrame, encode, utcnow
from shared.settings import REPO_ROOT, Settings

RATE = 30.0
STAGES = ("simulator", "bridge")


def simulator_us(replay: Path, matches: int, seconds: float) -> float:
    """CPU per update sent of ``matches`` matches of ``replay`` played by the simulator."""
    parsed = parse_replay_file(replay, replay.stem, RATE)
    options = PlaybackOptions(speed=1e6, max_seconds=seconds)  # no waiting between messages
    played = build_matches([parsed], matches, options, loop=False)
    for match in played:
        match.first_client.set()

    async def play() -> None:
        await asyncio.gather(*(match.play() for match in played))

    started = time.process_time()
    asyncio.run(play())
    return (time.process_time() - started) / sum(m.frames_sent for m in played) * 1e6


def bridge_us(replay: Path, seconds: float) -> float:
    """CPU per update of the bridge's SOS mapping and encoding of the frames."""
    parsed = parse_replay_file(replay, replay.stem, RATE)
    texts = [
        json.dumps(message, separators=(",", ":"))
        for _, message in sos_messages(
            parsed, "sim-0123456789abcdef", PlaybackOptions(max_seconds=seconds)
        )
        if message["event"] == "game:update_state"
    ]
    session, received_at = SosSession(), utcnow()
    started = time.process_time()
    for text in texts:
        frame = session.handle(text, received_at)
        if isinstance(frame, LiveFrame):
            encode(frame)
    return (time.process_time() - started) / len(texts) * 1e6


def main() -> None:
    default_replay = Settings().replays_dir / "corpus" / "boxcars-00bb.replay"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="a commit: its feed against this one's")
    parser.add_argument("--matches", type=int, default=10, help="matches the simulator plays")
    parser.add_argument("--seconds", type=float, default=60.0, help="of each match's game")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--replay", type=Path, default=default_replay)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one round, for the parent
        sim = simulator_us(args.replay, args.matches, args.seconds)
        print(sim, bridge_us(args.replay, args.seconds))
        return
    options = [
        *("--against", args.against, "--matches", str(args.matches)),
        *("--seconds", str(args.seconds), "--replay", str(args.replay), "--child"),
    ]
    names = (f"at {args.against}", "this code")
    us: dict[str, dict[str, list[float]]] = {n: {s: [] for s in STAGES} for n in names}
    with tempfile.TemporaryDirectory(prefix="live-feed-") as folder:
        tree = archived(args.against, Path(folder))
        for _ in range(args.rounds):
            for name, root in zip(names, (tree, REPO_ROOT), strict=True):
                output = run_child(Path(__file__), root, options).split()
                for stage, value in zip(STAGES, output[-2:], strict=True):
                    us[name][stage].append(float(value))
    print(
        f"{args.matches} matches of {args.replay.name}, {args.seconds:g} s of game each, "
        f"{args.rounds} rounds, each in a fresh process"
    )
    print("stage      code              CPU us/update (median)   rounds              ratio")
    for stage in STAGES:
        base = statistics.median(us[names[0]][stage])
        for name in names:
            median = statistics.median(us[name][stage])
            rounds = " ".join(f"{v:.0f}" for v in us[name][stage])
            print(
                f"{stage:<10} {name:<16}  {median:>12.1f}             {rounds:<18}  "
                f"{median / base:.2f}"
            )


if __name__ == "__main__":
    main()
