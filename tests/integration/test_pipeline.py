"""The whole pipeline, five service processes on real Kafka and Postgres.

Replays are dropped into the watched folder of a fresh stack, with no model registered; the
test then checks, from Postgres and from the Kafka topics themselves, that the shipped model
was promoted by the stack itself and every player of every parsed replay is scored exactly
once, that every bad file is dead-lettered with a reason, that training promotes a model, and
that dropping the same files again adds nothing.
"""

from __future__ import annotations

import asyncio
import shutil
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest

from shared.events import (
    REPLAY_FAILED,
    SCORES_EMITTED,
    ReplayFailed,
    ScoreEmitted,
)
from shared.model import DEFAULT_MODEL_FILE, ImpactModel
from shared.settings import SERVICE_NAMES
from tests.integration.conftest import Stack, events_on, wait_for

pytestmark = pytest.mark.integration

N_GOOD = 20
STAGE_TIMEOUT = 240.0


@dataclass
class Collected:
    failed: list[ReplayFailed]
    scores: list[ScoreEmitted]


@pytest.fixture(scope="module")
async def collected(stack: Stack) -> AsyncIterator[Collected]:
    """Everything that appears on replay.failed and scores.emitted during the test."""
    async with (
        events_on(stack, REPLAY_FAILED, ReplayFailed) as failed,
        events_on(stack, SCORES_EMITTED, ScoreEmitted) as scores,
    ):
        yield Collected(failed, scores)


def _pick_good(good_replays):
    """Small-to-medium replays with goals, so the trainer gets real labels quickly."""
    with_goals = [r for r in good_replays if (r.goals or 0) >= 1 and r.team_size]
    return sorted(with_goals, key=lambda r: r.path.stat().st_size)[10 : 10 + N_GOOD]


async def _count(pg: asyncpg.Connection, sql: str, ids: list[str]) -> int:
    """``sql`` counts rows of this test's replays: its ``$1`` is their ids."""
    return await pg.fetchval(sql, ids)


def _metric(stack: Stack, service: str, name: str) -> float:
    port = stack.settings.metrics_port(service)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


async def test_replays_flow_to_exactly_one_score_per_player(
    stack: Stack, pg: asyncpg.Connection, collected: Collected, good_replays, bad_replays
):
    good, bad = _pick_good(good_replays), bad_replays[:3]
    assert len(good) == N_GOOD
    inbox = stack.settings.inbox_dir
    await wait_for(lambda: _exists(inbox), 60, "the ingestor to create its inbox")
    for replay in [*good, *bad]:
        shutil.copy(replay.path, inbox / replay.path.name)
    total = len(good) + len(bad)
    ids = [r.sha256 for r in [*good, *bad]]  # other tests' replays may share the stack

    async def settled() -> bool:
        n = await _count(
            pg,
            "SELECT count(*) FROM replays WHERE status IN ('scored','failed') AND id = ANY($1)",
            ids,
        )
        return n == total

    await wait_for(settled, STAGE_TIMEOUT, f"{total} replays to be scored or failed")
    scored_replays = await _count(
        pg, "SELECT count(*) FROM replays WHERE status = 'scored' AND id = ANY($1)", ids
    )
    assert scored_replays == N_GOOD, "the chosen replays all parse, and are scored"
    # No model was registered: the stack promoted the shipped one by itself.
    shipped = ImpactModel(stack.settings.default_model_dir / DEFAULT_MODEL_FILE).version
    active = await pg.fetchrow("SELECT id, version FROM models WHERE status = 'active'")
    assert active is not None and active["version"] == shipped
    scored = "SELECT count(*) FROM scores WHERE replay_id = ANY($1)"
    n_players = await _count(
        pg,
        "SELECT count(*) FROM replay_players p JOIN replays r ON r.id = p.replay_id"
        " WHERE r.status = 'scored' AND r.id = ANY($1)",
        ids,
    )

    async def all_scored() -> bool:
        return len(_mine(collected.scores, ids)) >= n_players

    await wait_for(all_scored, STAGE_TIMEOUT, f"{n_players} scores.emitted events")
    assert {e.model_id for e in _mine(collected.scores, ids)} == {active["id"]}

    rows = await pg.fetch(
        "SELECT p.replay_id, p.player_index, count(s.*) AS n FROM replay_players p"
        " JOIN replays r ON r.id = p.replay_id LEFT JOIN scores s USING (replay_id, player_index)"
        " WHERE r.status = 'scored' AND r.id = ANY($1) GROUP BY 1, 2",
        ids,
    )
    assert len(rows) == n_players and all(row["n"] == 1 for row in rows)
    events = Counter((e.replay_id, e.player_index) for e in _mine(collected.scores, ids))
    assert set(events) == {(row["replay_id"], row["player_index"]) for row in rows}
    assert set(events.values()) == {1}
    mine = _mine(collected.scores, ids)
    assert all(e.offence is not None and e.impact_per_minute is not None for e in mine)
    assert sum(e.touches or 0 for e in mine) > 0, "impact is credited over ball touches"

    failed = {e.replay_id: e for e in collected.failed}
    for replay in bad:
        assert replay.sha256 in failed, f"{replay.path.name} has no replay.failed event"
        assert failed[replay.sha256].stage == "parse" and failed[replay.sha256].reason

    # Training on the stored replays gives a model, promoted on request; replays already
    # scored keep their one score per player.
    train = stack.cli("train", "--promote", "always")
    assert train.returncode == 0, train.stderr

    async def trained() -> bool:
        return await pg.fetchval(
            "SELECT count(*) FROM models WHERE status = 'active' AND kind = 'impact'"
            " AND version <> $1",
            shipped,
        )

    async def job_succeeded() -> bool:  # recorded just after the promotion
        status = await pg.fetchval("SELECT status FROM train_jobs ORDER BY id DESC LIMIT 1")
        assert status != "failed", "the train job failed"
        return status == "succeeded"

    await wait_for(trained, STAGE_TIMEOUT, "the trained model to be promoted")
    await wait_for(job_succeeded, STAGE_TIMEOUT, "the train job to be recorded as succeeded")

    # The same files again, under new names: nothing new anywhere.
    replays_before = await pg.fetchval("SELECT count(*) FROM replays")
    duplicates_before = _metric(stack, "ingestor", "rlimpact_ingest_duplicates_total")
    for replay in [*good, *bad]:
        shutil.copy(replay.path, inbox / f"again-{replay.path.name}")

    async def all_seen_as_duplicates() -> bool:
        seen = _metric(stack, "ingestor", "rlimpact_ingest_duplicates_total")
        return seen - duplicates_before == total

    await wait_for(all_seen_as_duplicates, 60, "the ingestor to see the copies")
    await asyncio.sleep(3)  # anything wrongly announced would be scored by now
    assert await pg.fetchval("SELECT count(*) FROM replays") == replays_before
    assert await _count(pg, scored, ids) == n_players
    assert len(_mine(collected.scores, ids)) == n_players
    assert len({e.replay_id for e in collected.failed}) == len(collected.failed)

    for name in SERVICE_NAMES:
        assert stack.processes[name].poll() is None, f"{name} died:\n{stack.log(name)[-3000:]}"
        assert _metric(stack, name, "rlimpact_up") == 1.0


def _mine(scores: list[ScoreEmitted], ids: list[str]) -> list[ScoreEmitted]:
    return [e for e in scores if e.replay_id in ids]


async def _exists(path) -> bool:
    return path.exists()
