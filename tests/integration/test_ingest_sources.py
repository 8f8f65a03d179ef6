"""The bucket and topic sources, on a real S3-compatible server (MinIO, deploy/minio.sh) and the
real Kafka and Postgres of the test stack.

The stack's ingestor is replaced by one that also watches a bucket. Objects go in: good ones,
a duplicate under another key, a non-replay, an oversize one and hostile keys; exactly the good
ones become ``replay.uploaded`` once, every other one a ``replay.failed`` with its reason. The
ingestor is restarted after a simulated crash between storing and announcing: nothing is taken
in twice and nothing is lost. ``rlimpact upload`` (to the bucket and to the blob store's
incoming folder) gets files parsed; hostile submissions are dead-lettered.

This module's replays are removed from Postgres at the end, so the pipeline test's counts stay
its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from services.cli.ingest import stage_file
from services.ingestor.ingest import rejection_id, upload_event
from services.ingestor.s3 import Bucket, s3_uri
from shared import db
from shared.events import (
    REPLAY_FAILED,
    REPLAY_SUBMITTED,
    REPLAY_UPLOADED,
    ReplayFailed,
    ReplaySubmitted,
    ReplayUploaded,
)
from shared.kafka import event_producer
from shared.settings import Settings
from shared.storage import FileBlobStore
from tests.integration.conftest import (
    Stack,
    events_on,
    restart_service,
    stop_service,
    wait_for,
)

pytestmark = pytest.mark.integration

BUCKET = "replays"
SMALL_LIMIT = 200_000  # the first ingestor's RLIMPACT_MAX_REPLAY_BYTES
TIMEOUT = 120.0
# Keys MinIO stores that must still never enter the pipeline. MinIO itself refuses '.', '..' and
# empty segments, backslashes, NUL and names over 255 bytes; check_name's unit tests cover those.
HOSTILE_KEYS = (
    "incoming/evil\x1b[2J.replay",  # a terminal escape
    "incoming/evil\n.replay",  # a forged log line
    "incoming/evil\u202eyalper.replay",  # right-to-left override: shows as "...replay.exe"
)


@dataclass
class Seen:
    uploaded: list[ReplayUploaded]
    failed: list[ReplayFailed]

    def uploads(self, replay_id: str) -> int:
        return sum(e.replay_id == replay_id for e in self.uploaded)

    def failures(self, uri: str) -> list[ReplayFailed]:
        return [e for e in self.failed if e.uri == uri]


@pytest.fixture(scope="module")
def s3(stack: Stack, minio: None) -> Settings:
    """MinIO on the stack's S3 port, with an empty bucket; settings that name the bucket."""
    settings = stack.settings.model_copy(update={"s3_bucket": BUCKET})
    Bucket(settings).create()
    return settings


@pytest.fixture(scope="module")
async def seen(stack: Stack) -> AsyncIterator[Seen]:
    async with (
        events_on(stack, REPLAY_UPLOADED, ReplayUploaded) as uploaded,
        events_on(stack, REPLAY_FAILED, ReplayFailed) as failed,
    ):
        yield Seen(uploaded, failed)


def _stop_ingestor(stack: Stack, clean: bool = True) -> None:
    stop_service(stack, "ingestor", clean)


async def _restart_ingestor(stack: Stack, clean: bool = True, **env: str) -> None:
    await restart_service(stack, "ingestor", clean, **env)


def _bucket_env(settings: Settings, max_bytes: int | None = None) -> dict[str, str]:
    env = {"RLIMPACT_S3_BUCKET": BUCKET, "RLIMPACT_S3_POLL_SECONDS": "0.5"}
    if max_bytes is not None:
        env["RLIMPACT_MAX_REPLAY_BYTES"] = str(max_bytes)
    return env


def _pick(good_replays) -> list:
    """Small 1v1 replays with goals, none of those the other integration tests use: the
    pipeline test starts at the 11th smallest, the collector test takes 3+ players."""
    with_goals = [r for r in good_replays if (r.goals or 0) >= 1 and r.team_size]
    smallest = sorted(with_goals, key=lambda r: r.path.stat().st_size)[:10]
    return [r for r in smallest if r.team_size == 1][:6]


async def _objects(pg: asyncpg.Connection) -> dict[str, asyncpg.Record]:
    rows = await pg.fetch("SELECT * FROM ingest_objects")
    return {row["uri"]: row for row in rows}


async def test_bucket_and_topic_sources(
    stack: Stack, s3: Settings, seen: Seen, pg: asyncpg.Connection, good_replays, tmp_path: Path
):
    picked = _pick(good_replays)
    good1, good2, good3, good4, good5, good6 = picked
    bucket = Bucket(s3)
    # The stack's own ingestor may still be starting, before its SIGTERM handler is in place.
    await _restart_ingestor(stack, clean=False, **_bucket_env(s3, SMALL_LIMIT))
    mine: set[str] = set()
    try:
        await _bucket_objects(stack, s3, bucket, seen, pg, good1, good2, tmp_path)
        mine |= {good1.sha256, good2.sha256}
        await _restart_after_a_crash(stack, s3, bucket, seen, pg, good3, good4)
        mine |= {good3.sha256, good4.sha256}
        await _upload_command(stack, s3, seen, pg, good5, good6, tmp_path)
        mine |= {good5.sha256, good6.sha256}
        await _hostile_submissions(stack, seen)
        await _parsed(pg, mine)
        for replay_id in mine:
            assert seen.uploads(replay_id) == 1, "announced exactly once"
        assert stack.processes["ingestor"].poll() is None, stack.log("ingestor")[-3000:]
    finally:
        await _restart_ingestor(stack, clean=False)  # as the stack started it: no bucket
        await _forget(pg, mine)


async def _bucket_objects(stack, s3, bucket, seen, pg, good1, good2, tmp_path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("these are meeting notes, not a replay\n" * 10)
    oversize = tmp_path / "big.replay"
    oversize.write_bytes(good1.path.read_bytes()[:64] + b"\0" * SMALL_LIMIT)
    puts = {
        "incoming/good1.replay": good1.path,
        "incoming/sub/good2.replay": good2.path,
        "incoming/again/copy-of-good1.replay": good1.path,
        "incoming/notes.txt": junk,
        "incoming/big.replay": oversize,
        "elsewhere/not-under-the-prefix.replay": good2.path,
        **dict.fromkeys(HOSTILE_KEYS, good2.path),
    }
    for key, path in puts.items():
        bucket.upload(path, key)
    under_prefix = [bucket.uri(key) for key in puts if key.startswith(s3.s3_prefix)]

    reasons = {
        "incoming/notes.txt": "not a Rocket League replay",
        "incoming/big.replay": f"over the limit of {SMALL_LIMIT}",
        HOSTILE_KEYS[0]: "control characters",
        HOSTILE_KEYS[1]: "control characters",
        HOSTILE_KEYS[2]: "control characters",
    }

    async def all_dealt_with() -> bool:
        return (
            set(under_prefix) <= set(await _objects(pg))
            and seen.uploads(good1.sha256) >= 1
            and seen.uploads(good2.sha256) >= 1
            and all(seen.failures(bucket.uri(key)) for key in reasons)
        )

    await wait_for(all_dealt_with, TIMEOUT, "every object under the prefix to be dealt with")
    await asyncio.sleep(2)  # anything announced or rejected twice would show by now
    objects = await _objects(pg)
    outcome = {uri: row["outcome"] for uri, row in objects.items() if uri in under_prefix}
    assert outcome.pop(bucket.uri("incoming/good1.replay")) in ("new", "duplicate")
    assert outcome.pop(bucket.uri("incoming/again/copy-of-good1.replay")) in ("new", "duplicate")
    assert outcome.pop(bucket.uri("incoming/sub/good2.replay")) == "new"
    assert set(outcome.values()) == {"rejected"}, outcome
    assert bucket.uri("elsewhere/not-under-the-prefix.replay") not in objects
    assert seen.uploads(good1.sha256) == 1 and seen.uploads(good2.sha256) == 1
    good1_event = next(e for e in seen.uploaded if e.replay_id == good1.sha256)
    assert good1_event.source == "s3"
    for key, reason in reasons.items():
        uri = bucket.uri(key)
        failures = seen.failures(uri)
        assert len(failures) == 1, f"{key!r}: {failures}"
        assert failures[0].stage == "ingest" and reason in failures[0].reason
        assert failures[0].replay_id == rejection_id(uri)
        assert objects[uri]["reason"] == failures[0].reason


async def _restart_after_a_crash(stack, s3, bucket, seen, pg, good3, good4) -> None:
    """The state a crash between storing and announcing leaves, for both sources: then a
    restart announces each once, and the redelivered or re-listed file is a duplicate."""
    failed_before = len(seen.failed)
    _stop_ingestor(stack)
    store = FileBlobStore(s3.blob_dir)
    bucket.upload(good3.path, "incoming/good3.replay")
    staged = stage_file(good4.path, s3, None, "upload")
    async with event_producer(s3, "test") as producer:
        await producer.send(REPLAY_SUBMITTED, staged)
    for replay, source in ((good3, "s3"), (good4, "upload")):
        event = upload_event(replay.path, store, s3.max_replay_bytes, source)
        assert await db.insert_replay(pg, event)  # recorded, never announced
    await _restart_ingestor(stack, **_bucket_env(s3))

    async def both_dealt_with() -> bool:
        objects = await _objects(pg)
        return bucket.uri("incoming/good3.replay") in objects and staged.uri in objects

    await wait_for(both_dealt_with, TIMEOUT, "the re-listed object and the redelivered file")
    objects = await _objects(pg)
    assert objects[bucket.uri("incoming/good3.replay")]["outcome"] == "duplicate"
    assert objects[staged.uri]["outcome"] == "duplicate"
    assert not (s3.upload_dir / good4.sha256).exists(), "a file taken in leaves incoming/"
    await asyncio.sleep(3)  # a second announcement or a repeated rejection would show by now
    assert seen.uploads(good3.sha256) == 1 and seen.uploads(good4.sha256) == 1
    assert len(seen.failed) == failed_before, "nothing rejected again after the restarts"


async def _upload_command(stack, s3, seen, pg, good5, good6, tmp_path) -> None:
    to_bucket = stack.cli("upload", str(good5.path), RLIMPACT_S3_BUCKET=BUCKET)
    assert to_bucket.returncode == 0, to_bucket.stderr
    assert "1 files submitted, 0 refused" in to_bucket.stdout
    to_folder = stack.cli("upload", "--source", "my-bot", str(good6.path))
    assert to_folder.returncode == 0, to_folder.stderr

    text = tmp_path / "notes.replay"
    text.write_text("not a replay")
    refused = stack.cli("upload", str(text))
    assert refused.returncode == 1
    assert "notes.replay: not a Rocket League replay" in refused.stderr
    missing = stack.cli("upload", str(tmp_path / "nope.replay"))
    assert missing.returncode != 0 and "no such file" in missing.stderr

    async def both_announced() -> bool:
        return seen.uploads(good5.sha256) == 1 and seen.uploads(good6.sha256) == 1

    await wait_for(both_announced, TIMEOUT, "the uploaded files to be announced")
    sources = {e.replay_id: e.source for e in seen.uploaded}
    assert (sources[good5.sha256], sources[good6.sha256]) == ("upload", "my-bot")
    key = f"{s3.s3_upload_prefix}{good5.sha256}/{good5.path.name}"
    assert (await _objects(pg))[s3_uri(BUCKET, key)]["outcome"] == "new"


async def _hostile_submissions(stack, seen) -> None:
    settings = stack.settings
    inside = settings.upload_dir / "x" / ".." / ".." / ".." / "secret.replay"
    bad = {
        "file:///etc/passwd": "leads outside",
        inside.as_uri(): "leads outside",
        "s3://someone-elses-bucket/x.replay": "is not the configured",
        f"s3://{BUCKET}/incoming/no-such-object.replay": "no object at",
        "http://example.invalid/x.replay": "unsupported URI",
    }
    async with event_producer(settings, "test") as producer:
        for uri in bad:
            await producer.send(REPLAY_SUBMITTED, ReplaySubmitted(uri=uri, filename="x.replay"))
        # Each URI once: a dead letter's replay_id is derived from it, and must stay unique.
        hostile_name = ReplaySubmitted(uri="file:///etc/shadow", filename="../../x.replay")
        await producer.send(REPLAY_SUBMITTED, hostile_name)
    bad[hostile_name.uri] = "path segment"

    async def all_failed() -> bool:
        return all(seen.failures(uri) for uri in bad)

    await wait_for(all_failed, TIMEOUT, "every hostile submission to be dead-lettered")
    for uri, reason in bad.items():
        [failure] = seen.failures(uri)
        assert failure.stage == "ingest" and reason in failure.reason, failure


async def _parsed(pg: asyncpg.Connection, mine: set[str]) -> None:
    async def settled() -> bool:
        n = await pg.fetchval(
            "SELECT count(*) FROM replays WHERE id = ANY($1::text[])"
            " AND status IN ('parsed', 'featurized', 'scored', 'failed')",
            list(mine),
        )
        return n == len(mine)

    await wait_for(settled, TIMEOUT, "this test's replays to be parsed")
    statuses = await pg.fetch(
        "SELECT id, status, status_reason FROM replays WHERE id = ANY($1::text[])", list(mine)
    )
    assert all(row["status"] in ("parsed", "featurized", "scored") for row in statuses), statuses


async def _forget(pg: asyncpg.Connection, mine: set[str]) -> None:
    """Remove this test's replays once the featurizer is done with them."""

    async def featurized() -> bool:
        n = await pg.fetchval(
            "SELECT count(*) FROM replays WHERE id = ANY($1::text[])"
            " AND status NOT IN ('featurized', 'scored', 'failed')",
            list(mine),
        )
        return n == 0

    await wait_for(featurized, TIMEOUT, "this test's replays to be featurized")
    async with pg.transaction():
        await pg.execute("DELETE FROM scores WHERE replay_id = ANY($1::text[])", list(mine))
        await pg.execute("DELETE FROM replays WHERE id = ANY($1::text[])", list(mine))
