"""Hot reload under load: a model promoted while replays stream through the pipeline.

Replays are dropped into the watched folder one a second while ``rlimpact models promote``
switches the active impact model. Every replay must be scored exactly once, by the old or the
new model, none dropped and none announced twice; the scorer must switch within seconds
without a restart. ``rlimpact rescore`` then scores the stored replays with the old model.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from services.parser.parse import parse_replay_file
from services.trainer.config import TrainConfig
from services.trainer.export import export_onnx
from services.trainer.skill import (
    SkillConfig,
    export_skill_onnx,
    planted_ratings,
    train_skill_model,
)
from services.trainer.train import train_impact_model
from shared.events import SCORES_EMITTED, ScoreEmitted, decode
from shared.features.batch import featurize
from shared.kafka import committed_records_since
from shared.retry import RetryPolicy
from tests.integration.conftest import Stack, events_on, wait_for

pytestmark = pytest.mark.integration

N_REPLAYS = 16
DROP_INTERVAL = 1.0  # seconds between two replays dropped into the watched folder
SCORED_BEFORE_PROMOTION = 4  # replays scored with the old model before the new one is promoted
SWITCH_SECONDS = 5.0
TIMEOUT = 300.0


@pytest.fixture(scope="module")
async def emitted(stack: Stack) -> AsyncIterator[list[ScoreEmitted]]:
    """Every scores.emitted event, from the start of the topic."""
    async with events_on(stack, SCORES_EMITTED, ScoreEmitted) as events:
        yield events


@pytest.fixture(scope="module")
def model_files(good_replays, tmp_path_factory) -> tuple[Path, Path]:
    """Two real (small) impact models, trained here on three corpus replays."""
    chosen = [r for r in good_replays if (r.goals or 0) >= 2][:3]
    tables = [featurize(parse_replay_file(r.path, r.sha256)) for r in chosen]
    folder = tmp_path_factory.mktemp("models")
    files = []
    run = uuid.uuid4().hex[:8]
    for seed in (1, 2):
        result = train_impact_model(
            tables, TrainConfig().with_fit(epochs=1, seed=seed), progress=False
        )
        files.append(folder / f"model-{seed}.onnx")
        export_onnx(result.model, files[-1], f"impact-hot-reload-{run}-seed{seed}")
    return files[0], files[1]


@pytest.fixture(scope="module")
def skill_file(good_replays, tmp_path_factory) -> Path:
    """A real (small) skill model, trained here on planted labels of six long corpus games."""
    long_games = [r for r in good_replays if (r.team_size or 0) == 3][:6]
    tables = [featurize(parse_replay_file(r.path, r.sha256)) for r in long_games]
    ratings = {(t.replay_id, i): v for t in tables for i, v in planted_ratings(t).items()}
    config = SkillConfig().with_fit(epochs=2)
    result = train_skill_model(tables, ratings, config, progress=False)
    path = tmp_path_factory.mktemp("skill") / "skill.onnx"
    export_skill_onnx(result.model, path, f"skill-hot-reload-{uuid.uuid4().hex[:8]}", config.stride)
    return path


def _scorer_model_id(stack: Stack) -> float:
    port = stack.settings.metrics_port("scorer")
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    lines = [x for x in body.splitlines() if x.startswith("rlimpact_active_model_id{")]
    return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0  # no series before a model


async def _register_and_promote(stack: Stack, pg: asyncpg.Connection, file: Path) -> int:
    registered = stack.cli("models", "register", str(file))
    assert registered.returncode == 0, registered.stderr
    version = registered.stdout.split()[4]
    model_id = await pg.fetchval("SELECT id FROM models WHERE version = $1", version)
    assert await pg.fetchval("SELECT status FROM models WHERE id = $1", model_id) == "candidate"
    promoted = stack.cli("models", "promote", version)
    assert promoted.returncode == 0, promoted.stderr
    assert "is now the active impact model" in promoted.stdout
    return model_id


async def _switched_to(stack: Stack, model_id: int) -> float:
    """Seconds until the scorer reports ``model_id`` as the one in use."""
    start = time.monotonic()
    await wait_for(
        lambda: _async(_scorer_model_id(stack) == model_id), 60, f"scorer on model {model_id}", 0.05
    )
    return time.monotonic() - start


async def _async(value: bool) -> bool:
    return value


async def test_a_promotion_under_load_switches_without_loss_or_duplicates(
    stack: Stack, pg: asyncpg.Connection, emitted: list[ScoreEmitted], good_replays, model_files
):
    inbox = stack.settings.inbox_dir
    await wait_for(lambda: _async(inbox.exists()), 60, "the ingestor to create its inbox")
    known = {row["id"] for row in await pg.fetch("SELECT id FROM replays")}
    # Other tests delete the replays they added, but not their scores.emitted events.
    since = datetime.fromtimestamp(0, UTC)
    async for record in committed_records_since(
        stack.settings, SCORES_EMITTED, since, RetryPolicy()
    ):
        known.add(decode(ScoreEmitted, record.value).replay_id)
    mine = [r for r in sorted(good_replays, key=lambda r: r.path.stat().st_size)[40:]]
    mine = [r for r in mine if r.sha256 not in known and r.team_size][:N_REPLAYS]
    ids = {r.sha256 for r in mine}
    assert len(mine) == N_REPLAYS
    scorer = stack.processes["scorer"]
    starts_before = stack.log("scorer").count(" started; ")

    old = await _register_and_promote(stack, pg, model_files[0])
    await _switched_to(stack, old)

    async def stream() -> None:
        for replay in mine:
            shutil.copy(replay.path, inbox / f"hot-{replay.path.name}")
            await asyncio.sleep(DROP_INTERVAL)

    streaming = asyncio.create_task(stream())

    async def scored_with_old() -> bool:
        return len({e.replay_id for e in emitted if e.replay_id in ids}) >= SCORED_BEFORE_PROMOTION

    await wait_for(scored_with_old, TIMEOUT, f"{SCORED_BEFORE_PROMOTION} replays scored")
    assert not streaming.done(), "the stream should still be flowing at the promotion"
    promoted_at = datetime.now(UTC)
    new = await _register_and_promote(stack, pg, model_files[1])
    switch_seconds = await _switched_to(stack, new)
    switched_at = datetime.now(UTC)
    await streaming

    async def settled() -> bool:
        n = await pg.fetchval(
            "SELECT count(*) FROM replays WHERE id = ANY($1) AND status IN ('scored','failed')",
            list(ids),
        )
        return n == len(ids)

    await wait_for(settled, TIMEOUT, "every streamed replay featurized or failed")
    players = await pg.fetch(
        "SELECT p.replay_id, p.player_index FROM replay_players p JOIN replays r"
        " ON r.id = p.replay_id WHERE r.status = 'scored' AND r.id = ANY($1)",
        list(ids),
    )
    expected = defaultdict(set)
    for row in players:
        expected[row["replay_id"]].add(row["player_index"])
    assert len(expected) >= N_REPLAYS - 2, "nearly all chosen replays parse"

    def mine_emitted() -> list[ScoreEmitted]:
        return [e for e in emitted if e.replay_id in expected]

    async def all_announced() -> bool:
        return len({(e.replay_id, e.player_index) for e in mine_emitted()}) == len(players)

    await wait_for(all_announced, TIMEOUT, f"scores.emitted for all {len(players)} players")
    await asyncio.sleep(2)  # a duplicate, if any, would arrive by now
    events = mine_emitted()

    # No scores.emitted duplicates; each replay scored by exactly one model, for all its players.
    assert max(Counter((e.replay_id, e.player_index, e.model_id) for e in events).values()) == 1
    models_of = defaultdict(set)
    for e in events:
        models_of[e.replay_id].add(e.model_id)
    assert all(len(models) == 1 for models in models_of.values()), models_of
    for replay_id, wanted in expected.items():
        assert {e.player_index for e in events if e.replay_id == replay_id} == wanted
    rows = await pg.fetch(
        "SELECT replay_id, player_index, model_id FROM scores WHERE replay_id = ANY($1)",
        list(expected),
    )
    assert sorted(tuple(r) for r in rows) == sorted(
        (e.replay_id, e.player_index, e.model_id) for e in events
    )

    # Both models scored part of the stream; the switch took seconds; the old model stopped.
    used = Counter(next(iter(models)) for models in models_of.values())
    assert set(used) == {old, new} and used[old] >= SCORED_BEFORE_PROMOTION and used[new] >= 1
    assert switch_seconds <= SWITCH_SECONDS
    assert all(e.emitted_at >= promoted_at for e in events if e.model_id == new)
    late = [e for e in events if e.model_id == old and e.emitted_at > switched_at]
    assert all((e.emitted_at - switched_at).total_seconds() < SWITCH_SECONDS for e in late)

    # Scores carry model id and version, impact and its components; no skill model is active.
    versions = dict(await pg.fetch("SELECT id, version FROM models WHERE id = ANY($1)", [old, new]))
    for e in events:
        assert e.model_version == versions[e.model_id]
        assert e.offence is not None and e.defence is not None and e.pace is not None
        assert e.impact == pytest.approx(e.offence + e.defence + e.pace, abs=1e-9)
        assert e.skill is None and e.skill_model_id is None

    # The scorer switched in place: same process, never restarted.
    assert scorer.poll() is None and stack.processes["scorer"].pid == scorer.pid
    assert stack.log("scorer").count(" started; ") == starts_before


async def test_rescore_scores_stored_replays_with_another_model_and_the_skill_model(
    stack: Stack, pg: asyncpg.Connection, emitted: list[ScoreEmitted], skill_file: Path
):
    old = await pg.fetchval(
        "SELECT id FROM models WHERE version LIKE 'impact-hot-reload-%-seed1' ORDER BY id DESC"
    )
    assert old is not None, "runs after the hot reload test"
    promoted = stack.cli("models", "register", str(skill_file), "--promote")
    assert promoted.returncode == 0, promoted.stderr
    assert "is now the active skill model" in promoted.stdout
    skill = await pg.fetchrow(
        "SELECT id, version FROM models WHERE status = 'active' AND kind = 'skill'"
    )
    impact = await pg.fetchval("SELECT id FROM models WHERE status = 'active' AND kind = 'impact'")
    assert impact is not None and impact != old, "promoting a skill model leaves impact alone"
    await wait_for(
        lambda: _async(f"now estimating skill with {skill['version']}" in stack.log("scorer")),
        30,
        "the scorer to load the skill model",
    )
    count = "SELECT count(*) FROM scores WHERE model_id = $1"
    rows_before, events_before = await pg.fetchval(count, old), len(emitted)
    result = stack.cli("rescore", "--model", str(old))
    assert result.returncode == 0, result.stderr
    missing = await pg.fetchval(
        "SELECT count(*) FROM replay_players p JOIN replays r ON r.id = p.replay_id"
        " WHERE r.status IN ('featurized', 'scored') AND NOT EXISTS (SELECT 1 FROM scores s"
        " WHERE s.replay_id = p.replay_id AND s.player_index = p.player_index"
        " AND s.model_id = $1)",
        old,
    )
    assert missing == 0, "every player of every featurized replay has a score by the old model"
    added = await pg.fetchval(count, old) - rows_before
    assert added > 0, "the replays scored by the new model are now scored by the old one too"

    def fresh() -> list[ScoreEmitted]:
        return [e for e in emitted[events_before:] if e.model_id == old]

    await wait_for(lambda: _async(len(fresh()) >= added), 60, f"{added} rescore events")
    await asyncio.sleep(2)
    assert len(fresh()) == added
    assert max(Counter((e.replay_id, e.player_index) for e in fresh()).values()) == 1
    for e in fresh():  # the skill estimate of the active skill model rides along
        assert e.skill is not None and 0 < e.skill < 5000
        assert (e.skill_model_id, e.skill_model_version) == (skill["id"], skill["version"])

    again = stack.cli("rescore", "--model", str(old))
    assert again.returncode == 0, again.stderr
    assert "rescored 0 replays" in again.stdout and "(0 scores emitted)" in again.stdout

    wrong = stack.cli("rescore", "--model", "no-such-model")
    assert wrong.returncode != 0 and "no model 'no-such-model'" in wrong.stderr
