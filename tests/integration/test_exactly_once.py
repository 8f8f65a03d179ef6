"""Exactly once across instances, on the test stack's real Kafka and Postgres: a rebalance in
the middle of a transactional batch, and score rows an earlier scorer wrote but did not mark.

Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiokafka import AIOKafkaProducer

from services.scorer.service import announced_earlier
from shared import db
from shared.db import ScoreRow
from shared.events import (
    HOUR_MS,
    SCORES_EMITTED,
    PlayerInfo,
    ReplayFailed,
    ReplayUploaded,
    ScoreEmitted,
    Topic,
    encode,
)
from shared.kafka import Emission, consume_in_transactions, ensure_topics, event_producer
from shared.service import ServiceContext, service_context
from shared.settings import Settings
from tests.integration.conftest import Stack, events_on, wait_for

pytestmark = pytest.mark.integration

MESSAGES = 12
SLOW_SECONDS = 1.0  # the first instance's time per message: long enough to be caught mid-batch


def _settings(stack: Stack) -> Settings:
    return stack.settings.model_copy(
        update={
            "retry_base_seconds": 0.1,
            "retry_max_seconds": 0.4,
            "consumer_group_prefix": f"test-{uuid.uuid4().hex[:8]}",
        }
    )


def _replay_id() -> str:
    return hashlib.sha256(uuid.uuid4().bytes).hexdigest()


async def test_a_rebalance_in_the_middle_of_a_batch_doubles_nothing(stack: Stack):
    """Instance a handles slowly, in batches spanning both partitions; instance b joins while
    a is in the middle of one. Without waiting for a's batch, the rebalance hands b a
    partition at its old committed offset, b handles a's records again, and a's transaction,
    committed afterwards, is accepted too: each record announced twice."""
    settings = _settings(stack)
    source = Topic(f"test.eos-in-{uuid.uuid4().hex[:8]}", partitions=2, retention_ms=HOUR_MS)
    sink = Topic(f"test.eos-out-{uuid.uuid4().hex[:8]}", partitions=1, retention_ms=HOUR_MS)
    await ensure_topics(settings, (source, sink))
    ids = [_replay_id() for _ in range(MESSAGES)]
    a_busy, stop = asyncio.Event(), asyncio.Event()

    def handler(slow: bool):
        async def handle(event: ReplayFailed) -> Emission:
            if slow:
                a_busy.set()
                await asyncio.sleep(SLOW_SECONDS)
            return Emission([(sink, event.model_copy(update={"stage": "score"}))])

        return handle

    async with (
        event_producer(settings, "test") as producer,
        events_on(stack, sink, ReplayFailed) as out,
    ):
        for replay_id in ids:
            failed = ReplayFailed(replay_id=replay_id, stage="parse", reason="r", error_type="t")
            await producer.send(source, failed)

        def instance(name: str, slow: bool) -> asyncio.Task[None]:
            return asyncio.create_task(
                consume_in_transactions(
                    settings,
                    "eos",
                    source,
                    ReplayFailed,
                    handler(slow),
                    producer,
                    transactional_id=f"{settings.consumer_group_prefix}-{name}",
                    stop=stop,
                    batch_size=MESSAGES,
                )
            )

        tasks = [instance("a", slow=True)]
        try:
            await wait_for(lambda: _async(a_busy.is_set()), 60, "instance a to take a batch")
            tasks.append(instance("b", slow=False))
            await wait_for(
                lambda: _async(set(ids) <= {e.replay_id for e in out}), 120, "every record"
            )
            await asyncio.sleep(3 * SLOW_SECONDS)  # a late duplicate would be committed by now
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
    counts = Counter(e.replay_id for e in out)
    assert {i: n for i, n in counts.items() if n != 1} == {}, "each record announced once"


async def _async(value: bool) -> bool:
    return value


@pytest.fixture
async def scorer_ctx(stack: Stack) -> AsyncIterator[ServiceContext]:
    async with service_context("scorer", _settings(stack)) as ctx:
        yield ctx


async def _unmarked_rows(ctx: ServiceContext, players: int) -> tuple[str, int]:
    """A replay with ``players`` score rows written and not marked, as a scorer that died
    leaves them."""
    assert ctx.pool is not None
    replay_id = _replay_id()
    async with ctx.pool.acquire() as conn:
        uploaded = ReplayUploaded(
            replay_id=replay_id, uri="file:///x.replay", filename="x.replay", size_bytes=1
        )
        await db.insert_replay(conn, uploaded)
        infos = [PlayerInfo(index=i, name=f"p{i}", team=i % 2) for i in range(players)]
        await db.replace_players(conn, replay_id, infos)
        model = await db.register_model(
            conn,
            name="impact",
            version=f"test-{replay_id[:8]}",
            uri="file:///m.onnx",
            sha256=replay_id,
            feature_schema_version=1,
            metrics={},
        )
        rows = [ScoreRow(replay_id, i, model.id, 1.0, 0.5, 0.5, 10) for i in range(players)]
        assert await db.insert_scores(conn, rows) == set(range(players))
        assert await db.insert_scores(conn, rows) == set(), "kept as they are"
    return replay_id, model.id


def _announcement(replay_id: str, model_id: int, player: int) -> ScoreEmitted:
    return ScoreEmitted(
        replay_id=replay_id,
        player_index=player,
        player_name=f"p{player}",
        team=player % 2,
        model_id=model_id,
        model_version="test",
        impact=1.0,
        n_frames=10,
    )


async def _emitted_flags(ctx: ServiceContext, replay_id: str) -> list[bool]:
    assert ctx.pool is not None
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT emitted FROM scores WHERE replay_id = $1 ORDER BY player_index", replay_id
        )
    return [row["emitted"] for row in rows]


@asynccontextmanager
async def _dying_scorer(ctx: ServiceContext) -> AsyncIterator[AIOKafkaProducer]:
    """A transactional producer standing for another scorer's."""
    producer = AIOKafkaProducer(
        bootstrap_servers=ctx.settings.kafka_bootstrap,
        transactional_id=f"test-other-scorer-{uuid.uuid4().hex[:8]}",
        enable_idempotence=True,
    )
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def _announce(
    producer: AIOKafkaProducer, replay_id: str, model_id: int, players: tuple[int, ...]
) -> None:
    for player in players:
        event = _announcement(replay_id, model_id, player)
        await producer.send_and_wait(SCORES_EMITTED.name, encode(event), key=event.key())


async def test_rows_another_scorer_announced_before_dying_are_marked_not_announced_again(
    scorer_ctx: ServiceContext,
):
    """Players 0 and 1 were announced in a committed transaction, player 2's in one that
    is still open when the check starts and is aborted 2 s later, player 3 in none: the
    check waits for the open one and leaves 2 and 3 to announce."""
    ctx = scorer_ctx
    replay_id, model_id = await _unmarked_rows(ctx, 4)
    async with _dying_scorer(ctx) as producer:
        async with producer.transaction():
            await _announce(producer, replay_id, model_id, (0, 1))
        await producer.begin_transaction()
        await _announce(producer, replay_id, model_id, (2,))
        check = asyncio.create_task(announced_earlier(ctx, replay_id, model_id, {0, 1, 2, 3}))
        await asyncio.sleep(2)
        assert not check.done(), "waits for the open transaction to end"
        await producer.abort_transaction()
        found = await asyncio.wait_for(check, 60)
    assert found == {0, 1}
    assert await _emitted_flags(ctx, replay_id) == [True, True, False, False]


async def test_a_transaction_committed_while_the_check_waits_counts_as_announced(
    scorer_ctx: ServiceContext,
):
    ctx = scorer_ctx
    replay_id, model_id = await _unmarked_rows(ctx, 2)
    async with _dying_scorer(ctx) as producer:
        await producer.begin_transaction()
        await _announce(producer, replay_id, model_id, (0, 1))
        check = asyncio.create_task(announced_earlier(ctx, replay_id, model_id, {0, 1}))
        await asyncio.sleep(1)
        await producer.commit_transaction()
        found = await asyncio.wait_for(check, 60)
    assert found == {0, 1}
    assert await _emitted_flags(ctx, replay_id) == [True, True]
