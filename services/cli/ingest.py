"""Feeding the pipeline: send replay files to the running stack.

``rlimpact ingest`` runs the ingestor's own code in this process (it needs Kafka, Postgres and
the blob store). ``rlimpact upload`` only needs Kafka and a place the ingestor reads: it puts
each file in the configured bucket (else the blob store's ``incoming/`` folder) and publishes a
``replay.submitted`` event pointing at it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import sys
from pathlib import Path

from tqdm import tqdm

from services.cli.common import replay_files
from services.ingestor.ingest import IngestRejected, check_file, check_name
from services.ingestor.s3 import Bucket, BucketUnavailable
from shared.events import SOURCE_PATTERN, ReplaySubmitted
from shared.settings import Settings
from shared.storage import sha256_file


def register(commands: argparse._SubParsersAction) -> None:
    ingest = commands.add_parser("ingest", help="send replay files or folders into the pipeline")
    ingest.add_argument("paths", nargs="+", type=Path)
    ingest.set_defaults(func=cmd_ingest)

    upload = commands.add_parser(
        "upload", help="submit replay files to the running ingestor (replay.submitted)"
    )
    upload.add_argument("paths", nargs="+", type=Path, help="files or folders of .replay files")
    upload.add_argument(
        "--source", default="upload", type=_source, help="recorded as the replays' source"
    )
    upload.set_defaults(func=cmd_upload)

    bucket = commands.add_parser("bucket", help="check the configured S3 bucket (or --create it)")
    bucket.add_argument("--create", action="store_true", help="create it if it is missing")
    bucket.set_defaults(func=cmd_bucket)


def _source(text: str) -> str:
    if not re.fullmatch(SOURCE_PATTERN, text):
        raise argparse.ArgumentTypeError(f"1 to 32 of a-z 0-9 _ . - please, not {text!r}")
    return text


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_ingest(settings, list(replay_files(args.paths))))


async def _ingest(settings: Settings, files: list[Path]) -> int:
    from services.ingestor.service import ingest_path
    from shared.service import service_context
    from shared.storage import open_blob_store

    store = open_blob_store(settings)
    new = 0
    async with service_context("cli", settings) as ctx:
        for path in tqdm(files, desc="ingest", unit="file"):
            new += await ingest_path(path, store, ctx, source="cli") is not None
    print(f"{new} new replays sent, {len(files) - new} duplicates or rejected")
    return 0


# ---------------------------------------------------------------- upload


def stage_file(
    path: Path, settings: Settings, bucket: Bucket | None, source: str
) -> ReplaySubmitted:
    """Check the file against the ingest limits, put it where the ingestor reads, describe it.

    The place is named by the content hash, so uploading the same file twice writes it once.
    """
    name = check_name(path.name)
    check_file(path, settings.max_replay_bytes)
    digest = sha256_file(path)
    if bucket is not None:
        key = f"{settings.s3_upload_prefix}{digest}/{name}"
        bucket.upload(path, key)
        uri = bucket.uri(key)
    else:
        target = settings.upload_dir / digest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{name}.partial")
        shutil.copyfile(path, partial)
        os.replace(partial, target)  # the ingestor never sees half a file
        uri = target.as_uri()
    return ReplaySubmitted(uri=uri, filename=name, source=source)


def cmd_upload(args: argparse.Namespace, settings: Settings) -> int:
    files = list(replay_files(args.paths))
    if not files:
        raise SystemExit("rlimpact upload: no .replay files in the given folders")
    bucket = _bucket(settings, "upload") if settings.s3_bucket else None
    return asyncio.run(_upload(settings, files, bucket, args.source))


async def _upload(settings: Settings, files: list[Path], bucket: Bucket | None, source: str) -> int:
    from aiokafka.errors import KafkaError

    from shared.events import REPLAY_SUBMITTED
    from shared.kafka import ensure_topics, event_producer

    where = bucket.uri(settings.s3_upload_prefix) if bucket else str(settings.upload_dir)
    refused = 0
    try:
        await ensure_topics(settings, (REPLAY_SUBMITTED,))
        async with event_producer(settings, "cli") as producer:
            for path in tqdm(files, desc=f"upload to {where}", unit="file"):
                try:
                    event = await asyncio.to_thread(stage_file, path, settings, bucket, source)
                except IngestRejected as rejected:
                    tqdm.write(f"rlimpact upload: {path}: {rejected.reason}", file=sys.stderr)
                    refused += 1
                    continue
                await producer.send(REPLAY_SUBMITTED, event)
    except KafkaError as error:
        raise SystemExit(
            f"rlimpact upload: cannot reach Kafka at {settings.kafka_bootstrap} ({error});"
            " is the stack up ('rlimpact up')?"
        ) from None
    except BucketUnavailable as error:
        raise SystemExit(f"rlimpact upload: {error}") from None
    print(f"{len(files) - refused} files submitted, {refused} refused")
    return 1 if refused else 0


# ---------------------------------------------------------------- bucket


def _bucket(settings: Settings, command: str) -> Bucket:
    try:
        return Bucket(settings)
    except ValueError as error:
        raise SystemExit(f"rlimpact {command}: {error}") from None


def cmd_bucket(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.s3_bucket:
        raise SystemExit("rlimpact bucket: no bucket configured: set RLIMPACT_S3_BUCKET")
    bucket = _bucket(settings, "bucket")
    try:
        if args.create and bucket.create():
            print(f"created bucket {bucket.name} at {settings.s3_endpoint}")
        elif not bucket.exists():
            print(f"no bucket {bucket.name} at {settings.s3_endpoint} (--create makes it)")
            return 1
    except BucketUnavailable as error:
        raise SystemExit(f"rlimpact bucket: {error}") from None
    prefix = settings.s3_prefix
    print(f"bucket {bucket.name} at {settings.s3_endpoint}: the ingestor takes in {prefix}*,")
    print(f"rlimpact upload writes {settings.s3_upload_prefix}<sha256>/<name>")
    return 0
