"""Live commands: play replays as a live game (an SOS plugin feed) for the bridge."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from tqdm import tqdm

from services.cli.common import replay_files
from shared.settings import Settings

SOS_PORT = 49122


def register(commands: argparse._SubParsersAction) -> None:
    simulate = commands.add_parser(
        "simulate",
        help="play replays as live matches on an SOS-plugin WebSocket feed (for the bridge)",
        description=(
            "Serve replays as the SOS BakkesMod plugin would serve a live game: match k on "
            "ws://HOST:PORT/k ('/' is match 0), starting when its first client connects. "
            "Point the bridge at it with RLIMPACT_BRIDGE_SOS_URLS."
        ),
    )
    simulate.add_argument("replays", nargs="+", type=Path, help="replay files or folders")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, default=SOS_PORT)
    simulate.add_argument("--rate", type=float, default=30.0, help="updates per game second")
    simulate.add_argument("--speed", type=float, default=1.0, help="1 = real time, 4 = 4x")
    simulate.add_argument(
        "--matches", type=int, default=1, help="matches served at once (cycling the replays)"
    )
    simulate.add_argument("--loop", action="store_true", help="start over when a match ends")
    simulate.add_argument("--max-seconds", type=float, help="play only this much of each game")
    simulate.add_argument("--goal-replay-seconds", type=float, default=3.0)
    simulate.add_argument(
        "--legacy", action="store_true", help="send what old plugin builds send: no locations"
    )
    simulate.set_defaults(func=cmd_simulate)


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from services.bridge.simulator import PlaybackOptions, SosSimulator, build_matches
    from services.parser.parse import ReplayParseError, parse_replay_file

    if args.rate <= 0 or args.speed <= 0 or args.matches < 1:
        raise SystemExit("rlimpact: --rate and --speed must be positive, --matches at least 1")
    files = list(replay_files(args.replays))
    if not files:
        raise SystemExit("rlimpact: no .replay files given")
    replays = []
    for path in tqdm(files, desc="parse", unit="replay", disable=len(files) < 2, file=sys.stderr):
        try:
            replays.append(parse_replay_file(path, path.stem, args.rate))
        except ReplayParseError as error:
            print(f"{path.name}: skipped: {error.reason}", file=sys.stderr)
    if not replays:
        raise SystemExit("rlimpact: none of the replays could be parsed")
    options = PlaybackOptions(
        speed=args.speed,
        goal_replay_seconds=args.goal_replay_seconds,
        max_seconds=args.max_seconds,
        legacy=args.legacy,
    )
    simulator = SosSimulator(build_matches(replays, args.matches, options, loop=args.loop))

    async def serve() -> None:
        try:
            await simulator.start(args.host, args.port)
        except OSError as error:
            raise SystemExit(
                f"rlimpact: cannot listen on {args.host}:{args.port}: {error}"
            ) from error
        port = simulator.port
        last = f"/{args.matches - 1}" if args.matches > 1 else "/"
        print(
            f"serving {args.matches} match(es) on ws://{args.host}:{port}/0 … {last} "
            f"at {args.rate:g} Hz x{args.speed:g}; waiting for clients (Ctrl-C stops)",
            flush=True,
        )
        stopped_by = await simulator.run_until_stopped()
        sent = sum(match.frames_sent for match in simulator.matches)
        why = f"stopped by {stopped_by.name}" if stopped_by else "done"
        print(f"{why}: {sent} game:update_state messages sent", flush=True)

    asyncio.run(serve())
    return 0
