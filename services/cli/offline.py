"""Offline commands: score and train on replay files in-process, no servers needed."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from services.cli.common import (
    add_recipe_arguments,
    load_impact_model,
    recipe_config,
    replay_files,
)
from shared.model import DEFAULT_MODEL_FILE
from shared.report import IMPACT_LEGEND, OUT_OF_SCOPE_NOTE
from shared.settings import Settings

if TYPE_CHECKING:
    from shared.events import PromotePolicy
    from shared.features.table import FeatureTable
    from shared.frames import ParsedReplay
    from shared.impact import PlayerScore, ScoredReplay
    from shared.model import ImpactModel

TEAM_NAMES = ("blue", "orange")
# where `train --local` writes without --out: beside the data, never over the tracked shipped model
LOCAL_MODEL_PATH = Path("models") / DEFAULT_MODEL_FILE


def register(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="ask the trainer service to train (or --local)")
    train.add_argument(
        "--promote", choices=["if-none-active", "always", "never"], default="if-none-active"
    )
    train.add_argument(
        "--local",
        type=Path,
        nargs="+",
        metavar="REPLAY_DIR",
        help="train in-process on the replays of these folders instead (no servers needed)",
    )
    train.add_argument(
        "--out", type=Path,
        help=f"with --local: where to write the ONNX model (default: DATA_DIR/{LOCAL_MODEL_PATH}; "
        "the shipped model is only overwritten when asked for by name)",
    )  # fmt: skip
    add_recipe_arguments(train)  # with --local
    train.set_defaults(func=cmd_train)

    score = commands.add_parser("score", help="score replay files offline (no servers needed)")
    score.add_argument("paths", nargs="+", type=Path, help="replay files or folders")
    score.add_argument("--model", type=Path, help="ONNX model (default: the shipped model)")
    score.add_argument(
        "--format", choices=SCORE_FORMATS, default="table",
        help="a table per replay, one JSON document, or CSV with one row per player",
    )  # fmt: skip
    score.set_defaults(func=cmd_score)

    report = commands.add_parser(
        "report", help="one replay's scores as a self-contained HTML page (charts, table)"
    )
    report.add_argument("replay", type=Path, help="a replay file")
    report.add_argument("--out", type=Path, required=True, help="folder for REPLAY.html")
    report.add_argument("--model", type=Path, help="ONNX model (default: the shipped model)")
    report.set_defaults(func=cmd_report)


def featurize_replays(
    paths: list[Path], settings: Settings, desc: str = "featurize"
) -> list[tuple[Path, FeatureTable]]:
    """Parse, validate and featurize replay files; those that fail are reported and skipped."""
    from services.parser.parse import ReplayParseError
    from services.parser.validate import parse_valid_replay
    from shared.features.batch import featurize
    from shared.storage import sha256_file

    tables = []
    rejected: list[str] = []
    seen: dict[str, Path] = {}  # sha256 -> first file: a match copied twice counts once
    files = list(replay_files(paths))
    for path in tqdm(files, desc=desc, unit="replay", file=sys.stderr, disable=len(files) < 2):
        sha256 = sha256_file(path)
        if sha256 in seen:
            rejected.append(f"{path.name}: the same file as {seen[sha256].name}")
            continue
        seen[sha256] = path
        try:
            parsed = parse_valid_replay(path, sha256, settings.fps, settings.validation)
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


SCORE_FORMATS = ("table", "json", "csv")
# One row per player of each scored replay (`rlimpact score --format csv`), in this order; the
# JSON format has the same fields per player (PLAYER_FIELDS) under its replay (REPLAY_FIELDS).
REPLAY_FIELDS = (
    "file",
    "replay_id",
    "team_size",
    "frames",
    "goals",
    "game_mode",
    "map",
    "in_scope",
)
PLAYER_FIELDS = (
    "player", "team", "platform_id", "impact", "offence", "defence", "pace", "impact_per_minute",
    "touches",
)  # fmt: skip
CSV_COLUMNS = ("file", "replay_id", "in_scope", *PLAYER_FIELDS)


def cmd_score(args: argparse.Namespace, settings: Settings) -> int:
    from services.parser.parse import ReplayParseError

    model = load_impact_model(args.model, settings)
    files = list(replay_files(args.paths))
    replays: list[dict[str, object]] = []
    failures = 0
    if args.format == "table":
        print(f"model {model.version}\n{IMPACT_LEGEND}")
    for path in tqdm(files, desc="score", unit="replay", disable=len(files) < 2, file=sys.stderr):
        try:
            parsed, _, scored = score_file(path, model, settings)
        except ReplayParseError as error:
            failures += 1
            replays.append({"file": path.name, "rejected": error.reason})
            if args.format == "table":
                print(f"\n{path.name}: rejected: {error.reason}")
            else:
                print(f"{path.name}: rejected: {error.reason}", file=sys.stderr)
            continue
        replay = replay_json(path, parsed, scored.scores)
        replays.append(replay)
        if args.format == "table":
            print_score_table(replay)
    if args.format == "json":
        print(json.dumps({"model": model.version, "legend": IMPACT_LEGEND, "replays": replays},
                         indent=2, ensure_ascii=False))  # fmt: skip
    elif args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for replay in replays:
            for player in replay.get("players", []):  # type: ignore[attr-defined]
                writer.writerow([replay["file"], replay["replay_id"], replay["in_scope"]]
                                + [player[f] for f in PLAYER_FIELDS])  # fmt: skip
    return 1 if failures == len(files) else 0


def score_file(
    path: Path, model: ImpactModel, settings: Settings
) -> tuple[ParsedReplay, FeatureTable, ScoredReplay]:
    """Parse, validate, featurize and score one replay file (ReplayParseError if unusable)."""
    from services.parser.validate import parse_valid_replay
    from shared.features.batch import featurize
    from shared.impact import score_replay
    from shared.storage import sha256_file

    parsed = parse_valid_replay(path, sha256_file(path), settings.fps, settings.validation)
    table = featurize(parsed, settings.horizon_seconds)
    return parsed, table, score_replay(table, model)


def replay_json(path: Path, parsed: ParsedReplay, scores: list[PlayerScore]) -> dict[str, object]:
    """A scored replay with REPLAY_FIELDS and its ``players``, each with PLAYER_FIELDS."""
    from shared.scope import in_scope

    ids = {p.index: p.platform_id for p in parsed.players}
    ordered = sorted(scores, key=lambda s: (s.team, -s.impact))
    return {
        "file": path.name,
        "replay_id": parsed.replay_id,
        "team_size": parsed.team_size,
        "frames": parsed.n_frames,
        "goals": [sum(g.team == t for g in parsed.goals) for t in (0, 1)],
        "game_mode": parsed.game_mode,
        "map": parsed.map_name,
        "in_scope": in_scope(parsed.map_name, parsed.game_mode),
        "players": [
            {
                "player": s.name,
                "team": TEAM_NAMES[s.team],
                "platform_id": ids.get(s.player_index),
                "impact": round(s.impact, 3),
                "offence": round(s.offence, 3),
                "defence": round(s.defence, 3),
                "pace": round(s.pace, 3),
                "impact_per_minute": round(s.impact_per_minute, 4),
                "touches": s.touches,
            }
            for s in ordered
        ],
    }


def print_score_table(replay: dict) -> None:
    goals = replay["goals"]
    print(
        f"\n{replay['file']}  ({replay['team_size']}v{replay['team_size']}, {replay['frames']} "
        f"frames, {sum(goals)} goals, {replay['game_mode'] or 'mode unknown'} on "
        f"{replay['map'] or 'an unknown arena'})"
    )
    if not replay["in_scope"]:
        print(f"  {OUT_OF_SCOPE_NOTE}")
    print(
        f"  {'player':<24} {'team':<7} {'impact':>8} {'offence':>8} {'defence':>8} "
        f"{'pace':>8} {'per min':>8} {'touches':>8}"
    )
    for p in replay["players"]:
        print(
            f"  {p['player'][:24]:<24} {p['team']:<7} {p['impact']:>8.1f} {p['offence']:>8.1f} "
            f"{p['defence']:>8.1f} {p['pace']:>8.1f} {p['impact_per_minute']:>8.2f} "
            f"{p['touches']:>8d}"
        )


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from services.parser.parse import ReplayParseError
    from shared.report import report_html, report_notes

    model = load_impact_model(args.model, settings)
    try:
        parsed, table, scored = score_file(args.replay, model, settings)
    except ReplayParseError as error:
        raise SystemExit(f"rlimpact: {args.replay.name}: rejected: {error.reason}") from None
    notes = report_notes(model.version, parsed.map_name, parsed.game_mode)
    title = (
        f"{args.replay.name}: {parsed.team_size}v{parsed.team_size}, "
        f"{parsed.game_mode or 'mode unknown'} on {parsed.map_name or 'an unknown arena'}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    page = args.out / f"{args.replay.stem}.html"
    page.write_text(report_html(table, scored, title, notes), encoding="utf-8")
    print(f"wrote {page}")
    return 0


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    if args.local is None:
        return asyncio.run(_request_training(settings, args.promote))
    from services.trainer.data import scoped_tables
    from services.trainer.export import export_onnx
    from services.trainer.network import weights_digest
    from services.trainer.train import train_impact_model
    from shared.model import split_metadata

    config = recipe_config(args)
    out = args.out or settings.data_dir / LOCAL_MODEL_PATH
    tables = [table for _, table in featurize_replays(args.local, settings)]
    if len(scoped_tables(tables)[0]) < 2:
        folders = ", ".join(str(folder) for folder in args.local)
        raise SystemExit(
            f"rlimpact: need at least 2 usable Soccar replays on standard arenas in {folders}"
        )
    result = train_impact_model(tables, config)
    out.parent.mkdir(parents=True, exist_ok=True)
    members = f"-x{args.members}" if args.members > 1 else ""
    version = (
        f"impact-local-seed{args.seed}{members}-{len(tables)}replays-{weights_digest(result.model)}"
    )
    export_onnx(
        result.model,
        out,
        version,
        metadata=split_metadata(result.train_replays, result.val_replays),
    )
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


async def _request_training(settings: Settings, promote: PromotePolicy) -> int:
    from shared.events import TRAIN_REQUESTED, TrainRequested
    from shared.service import service_context

    async with service_context("cli", settings) as ctx:
        await ctx.producer.send(
            TRAIN_REQUESTED, TrainRequested(requested_by="cli", promote=promote)
        )
    print("train.requested sent; the trainer service picks it up ('rlimpact status' to follow)")
    return 0
