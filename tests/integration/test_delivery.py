"""Nothing lost, nothing doubled: the consume loop against a dependency that is down, a bad
message, the scorer killed with SIGKILL, and Postgres stopped under load.

On the test stack's real Kafka and Postgres. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared import db
from shared.events import (
    EVENTS_INVALID,
    FEATURES_READY,
    HOUR_MS,
    REPLAY_FAILED,
    SCORES_EMITTED,
    FeaturesReady,
    InvalidEvent,
    ReplayFailed,
    ReplayUploaded,
    ScoreEmitted,
    Topic,
)
from shared.kafka import consume, ensure_topics, event_producer
from shared.service import service_context
from shared.settings import REPO_ROOT, SERVICE_NAMES, Settings
from tests.integration.conftest import Stack, events_on, wait_for

pytestmark = pytest.mark.integration

TIMEOUT = 240.0
KILLS = 5


def _quick(settings: Settings) -> Settings:
    """The stack's settings with short backoff and a consumer group of this test alone."""
    return settings.model_copy(
        update={
            "retry_base_seconds": 0.1,
            "retry_max_seconds": 0.4,
            "consumer_group_prefix": f"test-{uuid.uuid4().hex[:8]}",
        }
    )


async def _committed(settings: Settings, service: str, topic: Topic) -> int | None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(settings.consumer_group(service))
    finally:
        await admin.close()
    found = [meta.offset for tp, meta in offsets.items() if tp.topic == topic.name]
    return found[0] if found and found[0] >= 0 else None


async def _caught_up(settings: Settings, service: str, topic: Topic) -> bool:
    """The service's group has committed every message of ``topic``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    await consumer.start()
    try:
        offsets = await admin.list_consumer_group_offsets(settings.consumer_group(service))
        mine = {tp: meta.offset for tp, meta in offsets.items() if tp.topic == topic.name}
        ends = await consumer.end_offsets(list(mine))
    finally:
        await consumer.stop()
        await admin.close()
    return bool(mine) and all(mine[tp] >= ends[tp] for tp in mine)


async def _fresh_topic(settings: Settings) -> Topic:
    topic = Topic(f"test.delivery-{uuid.uuid4().hex[:8]}", partitions=1, retention_ms=HOUR_MS)
    await ensure_topics(settings, (topic,))
    return topic


def _fake_replay_id() -> str:
    return hashlib.sha256(uuid.uuid4().bytes).hexdigest()


async def _run_until(
    condition: Callable[[], Awaitable[bool]], loop: Callable[[asyncio.Event], Awaitable[None]]
) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(loop(stop))
    try:
        await wait_for(condition, 60, "the consume loop")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_a_dependency_down_is_waited_for_on_the_same_message_without_a_dead_letter(
    stack: Stack,
):
    settings = _quick(stack.settings)
    topic = await _fresh_topic(settings)
    replay_id = _fake_replay_id()
    closed_port = dict(settings.model_dump(), pg_port=1)  # nothing listens there
    down = Settings.model_validate(closed_port)
    attempts: list[int | None] = []
    handled = asyncio.Event()

    async def handler(event: ReplayFailed) -> None:
        # The first three tries meet a Postgres that is not there (a real refused connection);
        # meanwhile the offset must stay uncommitted.
        attempts.append(await _committed(settings, "t", topic))
        dsn = (down if len(attempts) <= 3 else settings).pg_dsn
        conn = await asyncpg.connect(dsn, timeout=5)
        await conn.close()
        handled.set()

    async with (
        events_on(stack, EVENTS_INVALID, InvalidEvent) as invalid,
        event_producer(settings, "test") as producer,
    ):
        event = ReplayFailed(replay_id=replay_id, stage="parse", reason="r", error_type="t")
        await producer.send(topic, event)

        async def done() -> bool:
            return handled.is_set() and await _committed(settings, "t", topic) == 1

        await _run_until(
            done,
            lambda stop: consume(settings, "t", topic, ReplayFailed, handler, producer, stop=stop),
        )
        await asyncio.sleep(1)
    assert len(attempts) == 4, "retried on the same message until the dependency answered"
    assert attempts[:3] == [None, None, None], "no offset committed while it was down"
    assert not [e for e in invalid if e.topic == topic.name], "a dependency down is no dead letter"


async def test_a_bad_message_is_dead_lettered_and_its_replay_marked_failed(stack: Stack):
    settings = _quick(stack.settings)
    topic = await _fresh_topic(settings)
    bad_id, undecodable_id = _fake_replay_id(), _fake_replay_id()
    calls: list[str] = []

    async def handler(event: ReplayFailed) -> None:
        calls.append(event.replay_id)
        raise ValueError("this event cannot be handled")

    async with (
        events_on(stack, EVENTS_INVALID, InvalidEvent) as invalid,
        events_on(stack, REPLAY_FAILED, ReplayFailed) as failed,
        service_context("test", settings) as ctx,
    ):
        async with ctx.pool.acquire() as conn:
            for replay_id in (bad_id, undecodable_id):
                uploaded = ReplayUploaded(
                    replay_id=replay_id, uri="file:///x", filename="x", size_bytes=1
                )
                await db.insert_replay(conn, uploaded)
        bad = ReplayFailed(replay_id=bad_id, stage="parse", reason="r", error_type="t")
        await ctx.producer.send(topic, bad)
        raw = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        await raw.start()
        try:
            undecodable = b'{"replay_id": "' + undecodable_id.encode() + b'", "nonsense": true}'
            await raw.send_and_wait(topic.name, undecodable)
        finally:
            await raw.stop()

        async def done() -> bool:
            return {e.replay_id for e in failed} >= {bad_id, undecodable_id}

        await _run_until(
            done,
            lambda stop: consume(
                settings,
                "t",
                topic,
                ReplayFailed,
                handler,
                ctx.producer,
                stop=stop,
                fail_replay=ctx.replay_failer("featurize"),
            ),
        )
        async with ctx.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT status, status_reason FROM replays WHERE id = ANY($1)",
                [bad_id, undecodable_id],
            )
    assert len(calls) == 3, "a failure of the message itself is tried a few times only"
    mine = [e for e in invalid if e.topic == topic.name]
    assert len(mine) == 2 and "ValueError: this event cannot be handled" in mine[0].reason
    assert [(r["status"], bool(r["status_reason"])) for r in rows] == [("failed", True)] * 2
    assert Counter(e.replay_id for e in failed if e.replay_id in (bad_id, undecodable_id)) == {
        bad_id: 1,
        undecodable_id: 1,
    }, "each replay named is failed once, with the reason"
    assert await _committed(settings, "t", topic) == 2, "and the loop went on"


# ---------------------------------------------------------------- the scorer, exactly once


def _restart(stack: Stack, name: str) -> subprocess.Popen[bytes]:
    log = (stack.data_dir / "logs" / f"{name}.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", f"services.{name}"],
        env=stack.env,
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    stack.processes[name] = process
    return process


def _kill9(stack: Stack, name: str) -> None:
    process = stack.processes[name]
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)


def _pick(good_replays, pg_known: set[str], count: int, skip: int) -> list:
    ordered = sorted(good_replays, key=lambda r: r.path.stat().st_size)[skip:]
    return [r for r in ordered if r.sha256 not in pg_known and r.team_size][:count]


async def _known(pg: asyncpg.Connection) -> set[str]:
    """The replays the stack knows, once the services have migrated its database."""

    async def migrated() -> bool:
        return await pg.fetchval("SELECT to_regclass('replays') IS NOT NULL") and (
            await pg.fetchval(
                "SELECT count(*) FROM schema_migrations WHERE name = '006_scored.sql'"
            )
        )

    await wait_for(migrated, 120, "the services to migrate the database")
    return {row["id"] for row in await pg.fetch("SELECT id FROM replays")}


async def _drop(stack: Stack, replays: list, prefix: str) -> None:
    inbox = stack.settings.inbox_dir
    await wait_for(lambda: _async(inbox.exists()), 60, "the ingestor's inbox")
    for replay in replays:
        shutil.copy(replay.path, inbox / f"{prefix}-{replay.path.name}")


async def _async(value: bool) -> bool:
    return value


async def _players(pg: asyncpg.Connection, ids: list[str]) -> set[tuple[str, int]]:
    rows = await pg.fetch(
        "SELECT p.replay_id, p.player_index FROM replay_players p JOIN replays r"
        " ON r.id = p.replay_id WHERE r.status = 'scored' AND r.id = ANY($1)",
        ids,
    )
    return {(row["replay_id"], row["player_index"]) for row in rows}


async def _settled(pg: asyncpg.Connection, ids: list[str]) -> bool:
    n = await pg.fetchval(
        "SELECT count(*) FROM replays WHERE id = ANY($1) AND status IN ('scored', 'failed')", ids
    )
    return n == len(ids)


def _per_key(events: list[ScoreEmitted], ids: list[str]) -> Counter[tuple[str, int, int]]:
    return Counter((e.replay_id, e.player_index, e.model_id) for e in events if e.replay_id in ids)


async def test_killing_the_scorer_neither_loses_nor_doubles_a_score(
    stack: Stack, pg: asyncpg.Connection, good_replays
):
    replays = _pick(good_replays, await _known(pg), 12, skip=60)
    ids = [r.sha256 for r in replays]
    rng = random.Random(4)
    kills_before = stack.log("scorer").count(" started; ")
    async with (
        events_on(stack, SCORES_EMITTED, ScoreEmitted) as emitted,
        events_on(stack, FEATURES_READY, FeaturesReady) as ready,
    ):
        # The replays come in waves, one SIGKILL per wave at a random point after its first
        # score, so every kill meets a scorer with work in hand or just arriving (one wave of
        # 12 could all be scored in one batch before the first kill, and the rest never met one).
        for n in range(KILLS):
            wave = replays[n::KILLS]
            scored_before = stack.log("scorer").count(" scored ")
            await _drop(stack, wave, f"kill{n}")

            async def scoring(before: int = scored_before) -> bool:
                return stack.log("scorer").count(" scored ") > before

            await wait_for(scoring, TIMEOUT, "the scorer to score a replay")
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            _kill9(stack, "scorer")
            _restart(stack, "scorer")
        await wait_for(lambda: _settled(pg, ids), TIMEOUT, "every replay scored or failed")

        async def restarted() -> bool:
            return stack.log("scorer").count(" started; ") - kills_before >= KILLS

        await wait_for(restarted, 60, "each killed scorer to start again")
        players = await _players(pg, ids)
        assert len(players) >= 6 * 2, "the chosen replays parse"

        async def announced() -> bool:
            return {(r, p) for r, p, _ in _per_key(emitted, ids)} == players

        await wait_for(announced, TIMEOUT, "a score event for every player")
        await asyncio.sleep(2)
        assert set(_per_key(emitted, ids).values()) == {1}, "read_committed: each score once"

        # The state a kill right after the Kafka commit leaves: announced, not marked. The
        # next start finds those rows on scores.emitted; a duplicate features.ready (which
        # upstream may send) then announces nothing again.
        await pg.execute("UPDATE scores SET emitted = false WHERE replay_id = ANY($1)", ids)
        _kill9(stack, "scorer")
        _restart(stack, "scorer")

        async def marked() -> bool:
            unmarked = "SELECT count(*) FROM scores WHERE NOT emitted AND replay_id = ANY($1)"
            return await pg.fetchval(unmarked, ids) == 0

        await wait_for(marked, TIMEOUT, "the restarted scorer to mark the announced rows")
        async with event_producer(stack.settings, "test") as producer:
            for event in {e.replay_id: e for e in ready if e.replay_id in ids}.values():
                await producer.send(FEATURES_READY, event)

        await wait_for(
            lambda: _caught_up(stack.settings, "scorer", FEATURES_READY),
            60,
            "the duplicates to be consumed",
        )
        await asyncio.sleep(5)
        assert set(_per_key(emitted, ids).values()) == {1}, "duplicates re-announce nothing"
    assert stack.processes["scorer"].poll() is None


async def test_postgres_stopped_under_load_loses_and_doubles_nothing(
    stack: Stack, pg: asyncpg.Connection, good_replays
):
    replays = _pick(good_replays, await _known(pg), 12, skip=100)
    ids = [r.sha256 for r in replays]
    script = REPO_ROOT / "deploy" / "postgres.sh"
    logs = {name: stack.data_dir / "logs" / f"{name}.log" for name in SERVICE_NAMES}
    async with (
        events_on(stack, SCORES_EMITTED, ScoreEmitted) as emitted,
        events_on(stack, REPLAY_FAILED, ReplayFailed) as failed,
        events_on(stack, EVENTS_INVALID, InvalidEvent) as invalid,
    ):
        await _drop(stack, replays[:8], "pgstop")
        await asyncio.sleep(3)  # replays in flight at every stage
        await pg.close()
        sizes = {name: _lines(path) for name, path in logs.items()}
        subprocess.run(["bash", str(script), "stop"], env=stack.env, check=True, timeout=60)
        down_at = time.monotonic()
        await _drop(stack, replays[8:], "pgstop")  # found by the ingestor while it is down
        await asyncio.sleep(20)
        subprocess.run(["bash", str(script), "start"], env=stack.env, check=True, timeout=120)
        outage = time.monotonic() - down_at
        grown = {name: _lines(path) - sizes[name] for name, path in logs.items()}
        conn = await asyncpg.connect(stack.settings.pg_dsn)
        try:
            await wait_for(lambda: _settled(conn, ids), TIMEOUT, "every replay scored or failed")
            players = await _players(conn, ids)
            statuses = Counter(
                row["status"]
                for row in await conn.fetch("SELECT status FROM replays WHERE id = ANY($1)", ids)
            )
        finally:
            await conn.close()
        assert statuses == {"scored": len(ids)}, "none failed for an outage"

        async def announced() -> bool:
            return {(r, p) for r, p, _ in _per_key(emitted, ids)} == players

        await wait_for(announced, TIMEOUT, "a score event for every player")
        await asyncio.sleep(2)
    assert set(_per_key(emitted, ids).values()) == {1}
    assert not [e for e in failed if e.replay_id in ids]
    assert not [e for e in invalid if any(i in e.raw for i in ids)], "no dead letters"
    for name in SERVICE_NAMES:
        assert stack.processes[name].poll() is None, f"{name} exited"
        assert grown[name] / outage < 5, f"{name} logged {grown[name]} lines in {outage:.0f} s"


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n")


async def test_a_producer_the_broker_refuses_for_its_sequence_is_replaced_and_nothing_lost(
    stack: Stack,
):
    """The broker's real OutOfOrderSequenceNumber (what a broker restart can leave an
    idempotent producer with: aiokafka's sender then stops for good): provoked by moving the
    producer's next sequence number on; the send goes through on a new producer."""
    settings = _quick(stack.settings)
    topic = await _fresh_topic(settings)
    first, second = (
        ReplayFailed(replay_id=_fake_replay_id(), stage="parse", reason="r", error_type="t")
        for _ in range(2)
    )
    async with (
        events_on(stack, topic, ReplayFailed) as seen,
        event_producer(settings, "test") as producer,
    ):
        await producer.send(topic, first)
        broken = producer._producer  # the real client inside (idempotent: it has sequences)
        assert broken._txn_manager is not None
        broken._txn_manager.increment_sequence_number(TopicPartition(topic.name, 0), 5)
        await asyncio.wait_for(producer.send(topic, second), 60)
        assert producer._producer is not broken, "replaced"
        await wait_for(lambda: _async(len(seen) >= 2), 30, "both events on the topic")
    assert [e.replay_id for e in seen] == [first.replay_id, second.replay_id]
