"""Skill labels: ``rlimpact labels import FILE`` and ``rlimpact labels status``."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from shared.settings import Settings

if TYPE_CHECKING:
    from services.ingestor.collector.labels import LabelFile

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


def register(commands: argparse._SubParsersAction) -> None:
    labels = commands.add_parser("labels", help="skill labels: import ratings, show counts")
    actions = labels.add_subparsers(dest="labels_command", required=True)
    imported = actions.add_parser(
        "import",
        help="import ratings from a CSV file or Ballchasing replay JSON lines",
        description="Import skill ratings. CSV: replay_filename,player_name,team,skill_rating"
        " (team 0/1 or blue/orange). JSON lines: one Ballchasing replay (GET /replays/<id>)"
        " per line; each player's MMR, else rank, is the rating. Prints what was imported and"
        " every row that was not, with its line number; exits with 1 if any row was not stored.",
    )
    imported.add_argument("file", type=Path)
    imported.add_argument(
        "--format", choices=["csv", "jsonl"], help="default: from the suffix (.csv, .jsonl)"
    )
    imported.add_argument(
        "--source", help="name of the labels' source (default: csv, or ballchasing for jsonl)"
    )
    imported.set_defaults(func=cmd_import)
    status = actions.add_parser(
        "status", help="labels per source: matched to a player, waiting for the parser, neither"
    )
    status.set_defaults(func=cmd_status)


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    from services.ingestor.collector.labels import LabelFileError, parse_csv, parse_jsonl

    file_format = args.format or FORMATS.get(args.file.suffix.lower())
    if file_format is None:
        raise SystemExit(f"rlimpact: cannot tell the format of {args.file}: pass --format")
    if not args.file.is_file():
        raise SystemExit(f"rlimpact: no such file: {args.file}")
    try:
        with args.file.open(encoding="utf-8-sig", newline="") as handle:
            parsed = parse_csv(handle) if file_format == "csv" else parse_jsonl(handle)
    except UnicodeDecodeError as error:
        raise SystemExit(f"rlimpact: {args.file} is not UTF-8 text: {error}") from None
    except LabelFileError as error:
        raise SystemExit(f"rlimpact: {args.file}: {error}") from None
    source = args.source or ("csv" if file_format == "csv" else "ballchasing")
    return asyncio.run(_import(settings, parsed, source))


async def _import(settings: Settings, parsed: LabelFile, source: str) -> int:
    from services.ingestor.collector.labels import import_labels
    from shared import db

    pool = await db.connect(settings)
    try:
        await db.migrate(pool)
        async with pool.acquire() as conn:
            report = await import_labels(conn, parsed.rows, source)
    finally:
        await pool.close()
    report.invalid = sorted([*parsed.invalid, *report.invalid], key=lambda bad: bad.line)
    report.unrated_players = parsed.unrated_players
    print(f"labels ({source}): {report.summary()}")
    for line in report.details():
        print(f"  {line}")
    not_stored = report.unmatched_replay or report.unmatched_player or report.invalid
    return 1 if not_stored else 0


def cmd_status(_: argparse.Namespace, settings: Settings) -> int:
    async def status() -> None:
        from shared import db

        pool = await db.connect(settings)
        try:
            await db.migrate(pool)
            async with pool.acquire() as conn:
                counts = await db.label_counts(conn)
        finally:
            await pool.close()
        if not counts:
            print("no labels")
        for c in counts:
            print(
                f"{c.source}: {c.stored} labels, {c.resolved} matched to a player,"
                f" {c.waiting} waiting for the parser, {c.unresolved} match no single player"
            )

    asyncio.run(status())
    return 0
