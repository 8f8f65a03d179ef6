"""Registered models, their scores and the trainer's jobs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime

import asyncpg

from shared.events import ModelKind

MODEL_KINDS: tuple[ModelKind, ...] = ("impact", "skill")


@dataclass(frozen=True)
class ModelRecord:
    id: int
    name: str
    version: str
    uri: str
    sha256: str
    feature_schema_version: int
    status: str
    metrics: dict[str, float]
    kind: ModelKind = "impact"


def _model(row: asyncpg.Record) -> ModelRecord:
    return ModelRecord(
        id=row["id"],
        name=row["name"],
        version=row["version"],
        uri=row["uri"],
        sha256=row["sha256"],
        feature_schema_version=row["feature_schema_version"],
        status=row["status"],
        metrics=json.loads(row["metrics"]),
        kind=row["kind"],
    )


async def register_model(
    conn: asyncpg.Connection,
    *,
    name: str,
    version: str,
    uri: str,
    sha256: str,
    feature_schema_version: int,
    metrics: dict[str, float],
    kind: ModelKind = "impact",
) -> ModelRecord:
    """Register a model as a candidate (``promote_model`` makes it the active one)."""
    row = await conn.fetchrow(
        "INSERT INTO models (name, version, uri, sha256, feature_schema_version, metrics, kind)"
        " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7) RETURNING *",
        name,
        version,
        uri,
        sha256,
        feature_schema_version,
        json.dumps(metrics),
        kind,
    )
    return _model(row)


async def promote_model(conn: asyncpg.Connection, model_id: int) -> ModelRecord:
    """Make the model active, retiring the active model of its kind, in one transaction."""
    async with conn.transaction():
        kind = await conn.fetchval("SELECT kind FROM models WHERE id = $1 FOR UPDATE", model_id)
        if kind is None:
            raise LookupError(f"no model with id {model_id}")
        await conn.execute(
            "UPDATE models SET status = 'retired'"
            " WHERE status = 'active' AND kind = $1 AND id <> $2",
            kind,
            model_id,
        )
        row = await conn.fetchrow(
            "UPDATE models SET status = 'active', promoted_at = now() WHERE id = $1 RETURNING *",
            model_id,
        )
    return _model(row)


async def active_model(conn: asyncpg.Connection, kind: ModelKind = "impact") -> ModelRecord | None:
    row = await conn.fetchrow("SELECT * FROM models WHERE status = 'active' AND kind = $1", kind)
    return None if row is None else _model(row)


async def find_model(conn: asyncpg.Connection, ref: str) -> ModelRecord | None:
    """A model by id (all digits) or by version."""
    if ref.isdigit():
        row = await conn.fetchrow("SELECT * FROM models WHERE id = $1", int(ref))
    else:
        row = await conn.fetchrow("SELECT * FROM models WHERE version = $1", ref)
    return None if row is None else _model(row)


async def list_models(conn: asyncpg.Connection) -> list[ModelRecord]:
    return [_model(row) for row in await conn.fetch("SELECT * FROM models ORDER BY id")]


# ---------------------------------------------------------------- scores


@dataclass(frozen=True)
class ScoreRow:
    """One player's score of one replay by one impact model (the primary key's three parts)."""

    replay_id: str
    player_index: int
    model_id: int
    impact: float
    offence: float | None
    defence: float | None
    n_frames: int
    skill: float | None = None
    skill_model_id: int | None = None
    impact_per_minute: float | None = None
    touches: int | None = None
    pace: float | None = None


@dataclass(frozen=True)
class StoredScore:
    """A score row with its player's name and team, as ``scores.emitted`` announces it."""

    row: ScoreRow
    name: str
    team: int


async def insert_scores(conn: asyncpg.Connection, rows: Sequence[ScoreRow]) -> set[int]:
    """Existing rows (same replay, player and model) are kept as they are; returns the player
    indexes of the rows written now."""
    columns = [f.name for f in fields(ScoreRow)]
    written = await conn.fetch(
        f"INSERT INTO scores ({', '.join(columns)})"
        " SELECT * FROM unnest($1::text[], $2::int[], $3::int[], $4::float8[], $5::float8[],"
        " $6::float8[], $7::int[], $8::float8[], $9::int[], $10::float8[], $11::int[],"
        " $12::float8[])"
        " ON CONFLICT DO NOTHING RETURNING player_index",
        *([getattr(r, name) for r in rows] for name in columns),
    )
    return {row["player_index"] for row in written}


async def unemitted_scores(
    conn: asyncpg.Connection, replay_id: str, model_id: int
) -> list[StoredScore]:
    rows = await conn.fetch(
        "SELECT s.replay_id, s.player_index, s.model_id, s.impact, s.offence, s.defence,"
        " s.n_frames, s.skill, s.skill_model_id, s.impact_per_minute, s.touches, s.pace, p.name,"
        " p.team"
        " FROM scores s JOIN replay_players p USING (replay_id, player_index)"
        " WHERE s.replay_id = $1 AND s.model_id = $2 AND NOT s.emitted ORDER BY s.player_index",
        replay_id,
        model_id,
    )
    return [
        StoredScore(
            ScoreRow(**{f.name: row[f.name] for f in fields(ScoreRow)}), row["name"], row["team"]
        )
        for row in rows
    ]


async def replays_scored_with(conn: asyncpg.Connection, model_id: int) -> set[str]:
    rows = await conn.fetch("SELECT DISTINCT replay_id FROM scores WHERE model_id = $1", model_id)
    return {row["replay_id"] for row in rows}


@dataclass(frozen=True)
class ScoreKey:
    replay_id: str
    player_index: int
    model_id: int


async def unemitted_keys(
    conn: asyncpg.Connection, replay_id: str | None = None, model_id: int | None = None
) -> tuple[set[ScoreKey], datetime | None]:
    """Every score row not marked as announced (of one replay and model, if given), and when
    the oldest was written."""
    rows = await conn.fetch(
        "SELECT replay_id, player_index, model_id, created_at FROM scores WHERE NOT emitted"
        " AND ($1::text IS NULL OR replay_id = $1) AND ($2::int IS NULL OR model_id = $2)",
        replay_id,
        model_id,
    )
    keys = {ScoreKey(r["replay_id"], r["player_index"], r["model_id"]) for r in rows}
    return keys, min((r["created_at"] for r in rows), default=None)


async def mark_keys_emitted(conn: asyncpg.Connection, keys: Sequence[ScoreKey]) -> None:
    await conn.execute(
        "UPDATE scores s SET emitted = true FROM unnest($1::text[], $2::int[], $3::int[])"
        " AS k(replay_id, player_index, model_id) WHERE s.replay_id = k.replay_id"
        " AND s.player_index = k.player_index AND s.model_id = k.model_id",
        [k.replay_id for k in keys],
        [k.player_index for k in keys],
        [k.model_id for k in keys],
    )


async def mark_emitted(
    conn: asyncpg.Connection, replay_id: str, model_id: int, player_indexes: Sequence[int]
) -> None:
    await conn.execute(
        "UPDATE scores SET emitted = true"
        " WHERE replay_id = $1 AND model_id = $2 AND player_index = ANY($3::int[])",
        replay_id,
        model_id,
        list(player_indexes),
    )


# ---------------------------------------------------------------- train jobs


async def start_train_job(conn: asyncpg.Connection) -> int:
    return await conn.fetchval("INSERT INTO train_jobs DEFAULT VALUES RETURNING id")


async def finish_train_job(
    conn: asyncpg.Connection,
    job_id: int,
    *,
    model_id: int | None = None,
    n_replays: int | None = None,
    error: str | None = None,
) -> None:
    await conn.execute(
        "UPDATE train_jobs SET status = $2, finished_at = now(), model_id = $3, n_replays = $4,"
        " error = $5 WHERE id = $1",
        job_id,
        "failed" if error else "succeeded",
        model_id,
        n_replays,
        error,
    )
