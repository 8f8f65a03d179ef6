"""Offline commands: score and train on replay files in-process, no servers needed."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from services.cli.common import (
    DEFAULT_MODEL_FILE,
    add_recipe_arguments,
    load_impact_model,
    recipe_config,
    replay_files,
)
from shared.settings import Settings

if TYPE_CHECKING:
    from services.featurizer.features import FeatureTable

OUT_OF_SCOPE_NOTE = (
    "out of scope: the impact model is trained for Soccar on standard arenas (shared/scope.py); "
    "these scores are indicative only"
)
IMPACT_LEGEND = (
    "impact: value added by the player's touches, 100 = one goal "
    "(offence: team P(score) raised; defence: team P(concede) lowered)"
)


def register(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="ask the trainer service to train (or --local)")
    train.add_argument(
        "--promote", choices=["if-none-active", "always", "never"], default="if-none-active"
    )
    train.add_argument(
        "--local",
        type=Path,
        metavar="REPLAY_DIR",
        help="train in-process on the replays of this folder instead (no servers needed)",
    )
    train.add_argument("--out", type=Path, help="with --local: where to write the ONNX model")
    add_recipe_arguments(train, epochs=6)  # with --local
    train.set_defaults(func=cmd_train)

    score = commands.add_parser("score", help="score replay files offline (no servers needed)")
    score.add_argument("paths", nargs="+", type=Path, help="replay files or folders")
    score.add_argument("--model", type=Path, help="ONNX model (default: the shipped model)")
    score.set_defaults(func=cmd_score)


def featurize_replays(
    paths: list[Path], settings: Settings, desc: str = "featurize"
) -> list[tuple[Path, FeatureTable]]:
    """Parse, validate and featurize replay files; those that fail are reported and skipped."""
    from services.featurizer.features import featurize
    from services.parser.parse import ReplayParseError
    from services.parser.validate import parse_valid_replay
    from shared.storage import sha256_file

    tables = []
    rejected: list[str] = []
    files = list(replay_files(paths))
    for path in tqdm(files, desc=desc, unit="replay", file=sys.stderr, disable=len(files) < 2):
        try:
            parsed = parse_valid_replay(path, sha256_file(path), settings.fps, settings.validation)
        except ReplayParseError as error:
            rejected.append(f"{path.name}: {error.reason}")
            continue
        tables.append((path, featurize(parsed, settings.horizon_seconds)))
    if rejected:
        print(
            f"skipped {len(rejected)} of {len(files)} replays that cannot be used:", file=sys.stderr
        )
        for line in rejected:
            print(f"  {line}", file=sys.stderr)
    return tables


def cmd_score(args: argparse.Namespace, settings: Settings) -> int:
    from services.featurizer.features import featurize
    from services.parser.parse import ReplayParseError
    from services.parser.validate import parse_valid_replay
    from services.scorer.score import score_table
    from shared.scope import in_scope
    from shared.storage import sha256_file

    model = load_impact_model(args.model, settings)
    files = list(replay_files(args.paths))
    failures = 0
    print(f"model {model.version}\n{IMPACT_LEGEND}")
    for path in tqdm(files, desc="score", unit="replay", disable=len(files) < 2, file=sys.stderr):
        try:
            parsed = parse_valid_replay(path, sha256_file(path), settings.fps, settings.validation)
        except ReplayParseError as error:
            failures += 1
            print(f"\n{path.name}: rejected: {error.reason}")
            continue
        scores = score_table(featurize(parsed, settings.horizon_seconds), model)
        print(
            f"\n{path.name}  ({parsed.team_size}v{parsed.team_size}, {parsed.n_frames} frames, "
            f"{len(parsed.goals)} goals, {parsed.game_mode or 'mode unknown'} on "
            f"{parsed.map_name or 'an unknown arena'})"
        )
        if not in_scope(parsed.map_name, parsed.game_mode):
            print(f"  {OUT_OF_SCOPE_NOTE}")
        print(
            f"  {'player':<24} {'team':<7} {'impact':>8} {'offence':>8} {'defence':>8} "
            f"{'per min':>8} {'touches':>8}"
        )
        for score in sorted(scores, key=lambda s: (s.team, -s.impact)):
            team = "blue" if score.team == 0 else "orange"
            print(
                f"  {score.name[:24]:<24} {team:<7} {score.impact:>8.1f} {score.offence:>8.1f} "
                f"{score.defence:>8.1f} {score.impact_per_minute:>8.2f} {score.touches:>8d}"
            )
    return 1 if failures == len(files) else 0


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    if args.local is None:
        return asyncio.run(_request_training(settings, args.promote))
    from services.trainer.train import (
        export_onnx,
        scoped_tables,
        train_impact_model,
        weights_digest,
    )

    config = recipe_config(args)
    out = args.out or settings.default_model_dir / DEFAULT_MODEL_FILE
    tables = [table for _, table in featurize_replays([args.local], settings)]
    if len(scoped_tables(tables)[0]) < 2:
        raise SystemExit(
            f"rlimpact: need at least 2 usable Soccar replays on standard arenas in {args.local}"
        )
    result = train_impact_model(tables, config)
    out.parent.mkdir(parents=True, exist_ok=True)
    members = f"-x{args.members}" if args.members > 1 else ""
    version = (
        f"impact-local-seed{args.seed}{members}-{len(tables)}replays-{weights_digest(result.model)}"
    )
    export_onnx(result.model, out, version)
    print(
        f"trained on {len(result.train_replays)} replays, validated on "
        f"{len(result.val_replays)} held-out replays; wrote {out} ({version})"
    )
    if result.out_of_scope:
        print(
            f"left out {len(result.out_of_scope)} replays of other game modes or arenas "
            "(shared/scope.py)"
        )
    print("held-out metrics, per (live frame, team):")
    for name, value in result.metrics.items():
        print(f"  {name:<22} {value:.4f}")
    return 0


async def _request_training(settings: Settings, promote: str) -> int:
    from shared.events import TRAIN_REQUESTED, TrainRequested
    from shared.service import service_context

    async with service_context("cli", settings) as ctx:
        await ctx.producer.send(
            TRAIN_REQUESTED, TrainRequested(requested_by="cli", promote=promote)
        )
    print("train.requested sent; the trainer service picks it up ('rlimpact status' to follow)")
    return 0
