"""Recovery, distrust of events and the S3 blob store, on the real Kafka, Postgres and MinIO.

The ingestor, parser, featurizer and scorer are restarted with the S3 blob store, each with its
own private storage folder, so no two of them share a disk: replays dropped in the watched
folder are scored with every blob in the bucket and none on a disk. Then, with the reconciler
ticking every second: replays left stranded at each stage (as an outage leaves them) are driven
on from that stage and scored once; a scored replay is never re-driven; ``rlimpact retry``
retries a failed replay and names unknown ids; a file dropped again resumes its stranded replay;
forged events are refused and touch no replay. The services get their usual settings back at
the end, and this module's replays are removed from Postgres.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from services.featurizer.service import featurize_to_store
from services.ingestor.ingest import upload_event
from services.ingestor.s3 import Bucket
from services.parser.parse import ReplayParseError
from services.parser.service import parse_to_store
from services.parser.validate import parse_valid_replay
from shared import db
from shared.events import (
    EVENTS_INVALID,
    FEATURES_READY,
    FRAMES_PARSED,
    REPLAY_FAILED,
    REPLAY_UPLOADED,
    SCORES_EMITTED,
    FeaturesReady,
    FramesParsed,
    InvalidEvent,
    ReplayFailed,
    ReplayUploaded,
    ScoreEmitted,
)
from shared.kafka import event_producer
from shared.settings import REPO_ROOT, Settings
from shared.storage import S3BlobStore, open_blob_store
from tests.integration.conftest import Stack, events_on, restart_service, wait_for
from tests.support.prometheus import scrape, total

pytestmark = pytest.mark.integration

BLOB_BUCKET = "blobs"
PIPELINE = ("ingestor", "parser", "featurizer", "scorer")
TIMEOUT = 180.0
RECONCILE = {"RLIMPACT_RECONCILE_INTERVAL_SECONDS": "1", "RLIMPACT_RECONCILE_AFTER_SECONDS": "5"}
N_REPLAYS = 8


@dataclass
class Seen:
    uploaded: list[ReplayUploaded]
    parsed: list[FramesParsed]
    ready: list[FeaturesReady]
    scores: list[ScoreEmitted]
    failed: list[ReplayFailed]
    invalid: list[InvalidEvent]

    def count(self, events: list, replay_id: str) -> int:
        return sum(e.replay_id == replay_id for e in events)


@dataclass
class S3Stack:
    settings: Settings  # the test's own, with the S3 blob store
    store: S3BlobStore
    env: dict[str, str]  # what every pipeline service runs with
    private: dict[str, Path]  # each service's own storage folder


@pytest.fixture(scope="module")
def replays(stack: Stack, good_replays) -> list:
    """Small 1v1 replays that parse, none of those the other integration tests use."""
    with_goals = sorted(
        (r for r in good_replays if (r.goals or 0) >= 1 and r.team_size),
        key=lambda r: r.path.stat().st_size,
    )
    picked = []
    for row in with_goals[30:]:
        if row.team_size != 1:
            continue
        try:
            parse_valid_replay(row.path, row.sha256, 10.0, stack.settings.validation)
        except ReplayParseError:
            continue
        picked.append(row)
        if len(picked) == N_REPLAYS:
            return picked
    pytest.fail(f"fewer than {N_REPLAYS} small valid 1v1 replays")


@pytest.fixture(scope="module")
async def seen(stack: Stack) -> AsyncIterator[Seen]:
    async with (
        events_on(stack, REPLAY_UPLOADED, ReplayUploaded) as uploaded,
        events_on(stack, FRAMES_PARSED, FramesParsed) as parsed,
        events_on(stack, FEATURES_READY, FeaturesReady) as ready,
        events_on(stack, SCORES_EMITTED, ScoreEmitted) as scores,
        events_on(stack, REPLAY_FAILED, ReplayFailed) as failed,
        events_on(stack, EVENTS_INVALID, InvalidEvent) as invalid,
    ):
        yield Seen(uploaded, parsed, ready, scores, failed, invalid)


@pytest.fixture(scope="module")
async def s3(stack: Stack, minio: None, pg: asyncpg.Connection, replays) -> AsyncIterator[S3Stack]:
    settings = stack.settings.model_copy(update={"blob_store": "s3", "blob_bucket": BLOB_BUCKET})
    Bucket(settings, BLOB_BUCKET).create()
    store = open_blob_store(settings)
    assert isinstance(store, S3BlobStore)
    env = {"RLIMPACT_BLOB_STORE": "s3", "RLIMPACT_BLOB_BUCKET": BLOB_BUCKET, **RECONCILE}
    private = {name: stack.data_dir / f"private-{name}" for name in PIPELINE}
    try:
        for name in PIPELINE:
            private[name].mkdir(exist_ok=True)
            # Started with the stack moments ago: perhaps before its SIGTERM handler was set.
            await restart_service(
                stack, name, clean=False, **env, RLIMPACT_STORAGE_DIR=str(private[name])
            )
        await _ensure_active_model(stack, pg, env)
        yield S3Stack(settings, store, env, private)
    finally:
        for name in PIPELINE:  # as the stack started them
            await restart_service(stack, name, clean=False)
        await _forget(pg, [r.sha256 for r in replays])


async def _ensure_active_model(stack: Stack, pg: asyncpg.Connection, env: dict[str, str]) -> None:
    """The shipped model, registered (into the bucket) and promoted, unless a model is active."""
    if await db.active_model(pg) is not None:
        return
    model = str(REPO_ROOT / "models" / "default" / "impact.onnx")
    done = stack.cli("models", "register", model, "--promote", **env)
    assert done.returncode == 0, done.stderr


async def _forget(pg: asyncpg.Connection, ids: list[str]) -> None:
    """Remove this module's replays once nothing works on them any more."""

    async def settled() -> bool:
        n = await pg.fetchval(
            "SELECT count(*) FROM replays WHERE id = ANY($1::text[])"
            " AND status NOT IN ('featurized', 'scored', 'failed')",
            ids,
        )
        return n == 0

    try:
        await wait_for(settled, 60, "this module's replays to settle")
    finally:
        async with pg.transaction():
            await pg.execute("DELETE FROM scores WHERE replay_id = ANY($1::text[])", ids)
            await pg.execute("DELETE FROM replays WHERE id = ANY($1::text[])", ids)


async def _scored(pg: asyncpg.Connection, seen: Seen, ids: list[str]) -> None:
    """Wait until each replay has one score row per player, each announced once."""

    async def all_scored() -> bool:
        rows = await pg.fetch(
            "SELECT p.replay_id, count(s.*) AS n, count(*) AS players FROM replay_players p"
            " LEFT JOIN scores s USING (replay_id, player_index)"
            " WHERE p.replay_id = ANY($1::text[]) GROUP BY 1",
            ids,
        )
        done = {r["replay_id"] for r in rows if r["n"] == r["players"] > 0}
        return done == set(ids) and all(
            seen.count(seen.scores, i) == _players(rows, i) for i in ids
        )

    await wait_for(all_scored, TIMEOUT, f"{len(ids)} replays to be scored")
    await asyncio.sleep(2)  # a second announcement would arrive by now
    rows = await pg.fetch(
        "SELECT replay_id, player_index, count(*) AS n FROM scores"
        " WHERE replay_id = ANY($1::text[]) GROUP BY 1, 2",
        ids,
    )
    assert rows and all(row["n"] == 1 for row in rows), "one score row per player and model"
    for replay_id in ids:
        events = [(e.player_index, e.model_id) for e in seen.scores if e.replay_id == replay_id]
        assert len(events) == len(set(events)), "each score announced once"


def _players(rows: list[asyncpg.Record], replay_id: str) -> int:
    return next(r["players"] for r in rows if r["replay_id"] == replay_id)


async def _strand(
    pg: asyncpg.Connection, s3: S3Stack, replay, status: str, reason: str | None = None
) -> None:
    """Leave the replay as an outage would: stored and recorded up to ``status``, its event
    lost, its status unchanged for an hour. The stages' blobs are made by the services' code."""
    event = upload_event(replay.path, s3.store, s3.settings.max_replay_bytes, "test")
    parsed = ready = None
    if status in ("parsed", "featurized"):
        args = (event.uri, event.replay_id, 10.0, s3.store, s3.settings.validation)
        parsed = await asyncio.to_thread(parse_to_store, *args)
    if status == "featurized":
        assert parsed is not None
        ready = await asyncio.to_thread(featurize_to_store, parsed, 10.0, s3.store)
    async with pg.transaction():  # the reconciler sees it whole or not at all
        assert await db.insert_replay(pg, event)
        if parsed is not None:
            await db.replace_players(pg, event.replay_id, parsed.players)
        await db.set_status(
            pg,
            event.replay_id,
            "test",
            status,
            reason,
            **({"frames_uri": parsed.frames_uri, "n_frames": parsed.n_frames} if parsed else {}),
            **({"features_uri": ready.features_uri} if ready else {}),
        )
        await _age(pg, [event.replay_id])


async def _age(pg: asyncpg.Connection, ids: list[str]) -> None:
    await pg.execute(
        "UPDATE replays SET updated_at = now() - interval '1 hour' WHERE id = ANY($1::text[])",
        ids,
    )


# ---------------------------------------------------------------- the tests, in order


async def test_the_pipeline_runs_on_the_s3_blob_store(
    stack: Stack, s3: S3Stack, seen: Seen, pg: asyncpg.Connection, replays
):
    first, second = replays[:2]
    inbox = stack.settings.inbox_dir
    for replay in (first, second):
        shutil.copy(replay.path, inbox / f"s3-{replay.path.name}")
    await _scored(pg, seen, [first.sha256, second.sha256])
    prefix = f"s3://{BLOB_BUCKET}/{s3.settings.blob_prefix}"
    for replay in (first, second):
        row = await pg.fetchrow("SELECT * FROM replays WHERE id = $1", replay.sha256)
        for column in ("uri", "frames_uri", "features_uri"):
            assert row[column].startswith(prefix), (column, row[column])
            assert s3.store.exists(row[column])
    for name, folder in s3.private.items():
        blobs = [p for p in folder.rglob("*") if p.is_file()]
        assert not blobs, f"the {name} wrote blobs to its own disk: {blobs}"


async def test_stranded_replays_are_driven_on_from_the_stage_they_reached(
    stack: Stack, s3: S3Stack, seen: Seen, pg: asyncpg.Connection, replays
):
    scored = replays[0].sha256
    since = await pg.fetchval("SELECT now()")
    ready_before = seen.count(seen.ready, scored)
    await _age(pg, [scored])  # final: it must stay as it is
    stranded = dict(zip(("uploaded", "parsed", "featurized"), replays[2:5], strict=True))
    for status, replay in stranded.items():
        await _strand(pg, s3, replay, status)
    ids = [replay.sha256 for replay in stranded.values()]
    await _scored(pg, seen, ids)
    uploaded, parsed, featurized = ids
    # Each was sent its stage's event (more than once, should a busy stage take over 5 s) and
    # none an earlier stage's: nothing was done again that had been done.
    assert seen.count(seen.uploaded, uploaded) >= 1
    assert seen.count(seen.uploaded, parsed) == 0 and seen.count(seen.parsed, parsed) >= 1
    assert seen.count(seen.parsed, featurized) == 0 and seen.count(seen.ready, featurized) >= 1
    redriven = await pg.fetch(
        "SELECT DISTINCT replay_id FROM replay_status_history"
        " WHERE stage = 'recovery' AND at >= $2 AND replay_id = ANY($1::text[])",
        [*ids, scored],
        since,
    )
    assert {row["replay_id"] for row in redriven} == set(ids), "the scored one is left alone"
    assert seen.count(seen.ready, scored) == ready_before
    for topic in (REPLAY_UPLOADED, FRAMES_PARSED, FEATURES_READY):
        assert _redrives(stack, topic.name) >= 1


def _redrives(stack: Stack, topic: str) -> float:
    """The ingestor's ``rlimpact_redrives_total`` for one topic (0 before any re-drive)."""
    samples = scrape(stack.settings.metrics_port("ingestor"))
    return total(samples, "rlimpact_redrives_total", topic=topic)


async def test_retry_by_hand(
    stack: Stack, s3: S3Stack, seen: Seen, pg: asyncpg.Connection, replays
):
    failed = replays[5]
    await _strand(pg, s3, failed, "failed", "simulated: the parser was down")
    await asyncio.sleep(6)  # past the age threshold, several passes: a failed replay is final
    assert await pg.fetchval("SELECT status FROM replays WHERE id = $1", failed.sha256) == "failed"

    unknown = stack.cli("retry", "ffffffff", "not-hex", **s3.env)
    assert unknown.returncode == 1
    assert "no replay with id 'ffffffff'" in unknown.stderr and "'not-hex'" in unknown.stderr
    assert stack.cli("retry", **s3.env).returncode != 0

    done = stack.cli("retry", replays[0].sha256[:12], **s3.env)
    assert done.returncode == 0 and "nothing to do" in done.stdout, done.stdout + done.stderr

    again = stack.cli("retry", "--failed", **s3.env)
    assert again.returncode == 0, again.stderr
    assert f"{failed.sha256[:16]}  failed (simulated: the parser was down)" in again.stdout
    await _scored(pg, seen, [failed.sha256])


async def test_a_file_dropped_again_resumes_its_stranded_replay(
    stack: Stack, s3: S3Stack, seen: Seen, pg: asyncpg.Connection, replays
):
    replay = replays[6]
    slow = {**s3.env, "RLIMPACT_RECONCILE_INTERVAL_SECONDS": "3600"}  # the drop, not the timer
    storage = str(s3.private["ingestor"])
    starts = stack.log("ingestor").count("ingestor: started")
    await restart_service(stack, "ingestor", **slow, RLIMPACT_STORAGE_DIR=storage)

    async def first_pass_done() -> bool:  # else it, not the drop, would find the replay
        # the new process's pass: its metrics answer before it logs that it started
        log = stack.log("ingestor")
        new_start = log.count("ingestor: started") > starts
        return new_start and "reconcile pass:" in log.rsplit("ingestor: started", 1)[-1]

    try:
        await wait_for(first_pass_done, 60, "the restarted ingestor's start-up reconcile pass")
        await _strand(pg, s3, replay, "uploaded")
        shutil.copy(replay.path, stack.settings.inbox_dir / f"again-{replay.path.name}")
        await _scored(pg, seen, [replay.sha256])
        assert "resumed" in stack.log("ingestor")
        assert seen.count(seen.uploaded, replay.sha256) == 1
    finally:
        await restart_service(stack, "ingestor", **s3.env, RLIMPACT_STORAGE_DIR=storage)


async def test_forged_events_are_refused_and_touch_no_replay(
    s3: S3Stack, seen: Seen, pg: asyncpg.Connection, replays
):
    victim, other = replays[0].sha256, replays[1].sha256
    before = await pg.fetch(
        "SELECT * FROM replay_players WHERE replay_id = $1 ORDER BY player_index", victim
    )
    status = await pg.fetchval("SELECT status FROM replays WHERE id = $1", victim)
    other_row = await pg.fetchrow("SELECT * FROM replays WHERE id = $1", other)
    invalid_before = len(seen.invalid)
    forged = [
        (REPLAY_UPLOADED, ReplayUploaded(
            replay_id=victim, uri=other_row["uri"], filename="x.replay", size_bytes=1)),
        (REPLAY_UPLOADED, ReplayUploaded(
            replay_id="0" * 64, uri="file:///etc/passwd", filename="x.replay", size_bytes=1)),
        (FRAMES_PARSED, FramesParsed(
            replay_id=victim, frames_uri=other_row["frames_uri"], n_frames=1, fps=10,
            team_size=1, players=[], goals=[])),
        (FEATURES_READY, FeaturesReady(
            replay_id=victim, features_uri="file:///etc/passwd", feature_schema_version=2,
            n_frames=1, players=[])),
    ]  # fmt: skip
    async with event_producer(s3.settings, "forger") as producer:
        for topic, event in forged:
            await producer.send(topic, event)

    async def all_refused() -> bool:
        return len(seen.invalid) - invalid_before >= len(forged)

    await wait_for(all_refused, 60, "the forged events on events.invalid")
    reasons = [e.reason for e in seen.invalid[invalid_before:]]
    assert any("is stored at" in r for r in reasons), reasons
    assert any("not a known replay" in r for r in reasons), reasons
    assert any("not the stored frames blob" in r for r in reasons), reasons
    assert any("not the stored features blob" in r for r in reasons), reasons
    await asyncio.sleep(2)
    after = await pg.fetch(
        "SELECT * FROM replay_players WHERE replay_id = $1 ORDER BY player_index", victim
    )
    assert after == before, "the players are the victim's own"
    assert await pg.fetchval("SELECT status FROM replays WHERE id = $1", victim) == status
    assert seen.count(seen.failed, victim) == 0


@pytest.fixture(scope="module", autouse=True)
def _no_leftover_private_folders(stack: Stack) -> Iterator[None]:
    yield
    for name in PIPELINE:
        shutil.rmtree(stack.data_dir / f"private-{name}", ignore_errors=True)
