"""Feeding the pipeline: send replay files to the running stack."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from tqdm import tqdm

from services.cli.common import replay_files
from shared.settings import Settings


def register(commands: argparse._SubParsersAction) -> None:
    ingest = commands.add_parser("ingest", help="send replay files or folders into the pipeline")
    ingest.add_argument("paths", nargs="+", type=Path)
    ingest.set_defaults(func=cmd_ingest)


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_ingest(settings, list(replay_files(args.paths))))


async def _ingest(settings: Settings, files: list[Path]) -> int:
    from services.ingestor.service import ingest_path
    from shared.service import service_context
    from shared.storage import BlobStore

    store = BlobStore(settings.blob_dir)
    new = 0
    async with service_context("cli", settings) as ctx:
        for path in tqdm(files, desc="ingest", unit="file"):
            new += await ingest_path(path, store, ctx, source="cli") is not None
    print(f"{new} new replays sent, {len(files) - new} duplicates or rejected")
    return 0
