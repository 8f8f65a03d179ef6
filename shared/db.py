"""asyncpg pool, migrations, and the queries the services share."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import asyncpg

from shared.events import PlayerInfo, ReplayUploaded
from shared.settings import Settings

MIGRATIONS_PACKAGE = "shared.migrations"


async def connect(settings: Settings, *, min_size: int = 1, max_size: int = 4) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(settings.pg_dsn, min_size=min_size, max_size=max_size)
    if pool is None:  # pragma: no cover - asyncpg returns None only without awaiting
        raise RuntimeError("could not create the Postgres pool")
    return pool


async def migrate(pool: asyncpg.Pool) -> list[str]:
    """Apply the ``shared/migrations/*.sql`` not yet applied, in name order; return their names."""
    applied: list[str] = []
    async with pool.acquire() as conn, conn.transaction():
        # One migrator at a time, even when several services start together.
        await conn.execute("SELECT pg_advisory_xact_lock(7324100)")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["name"] for row in await conn.fetch("SELECT name FROM schema_migrations")}
        files = sorted(
            (f for f in resources.files(MIGRATIONS_PACKAGE).iterdir() if f.name.endswith(".sql")),
            key=lambda f: f.name,
        )
        for migration in files:
            if migration.name in done:
                continue
            await conn.execute(migration.read_text())
            await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", migration.name)
            applied.append(migration.name)
    return applied


# ---------------------------------------------------------------- replays


async def insert_replay(conn: asyncpg.Connection, event: ReplayUploaded) -> bool:
    """Record a new replay; False if this content hash is already known (a duplicate)."""
    row = await conn.fetchrow(
        "INSERT INTO replays (id, filename, uri, size_bytes, source) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (id) DO NOTHING RETURNING id",
        event.replay_id,
        event.filename,
        event.uri,
        event.size_bytes,
        event.source,
    )
    return row is not None


async def unpublished_replays(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, filename, uri, size_bytes, source FROM replays WHERE status = 'received'"
    )


async def set_status(
    conn: asyncpg.Connection,
    replay_id: str,
    stage: str,
    status: str,
    reason: str | None = None,
    **columns: Any,
) -> None:
    """Set a replay's status and record the change; a replay with no row (rejected at ingest,
    before it was recorded) has no status to set."""
    assignments = "".join(f", {name} = ${i}" for i, name in enumerate(columns, start=4))
    updated = await conn.fetchval(
        f"UPDATE replays SET status = $2, status_reason = $3, updated_at = now(){assignments}"
        " WHERE id = $1 RETURNING id",
        replay_id,
        status,
        reason,
        *columns.values(),
    )
    if updated is None:
        return
    await conn.execute(
        "INSERT INTO replay_status_history (replay_id, stage, status, reason)"
        " VALUES ($1, $2, $3, $4)",
        replay_id,
        stage,
        status,
        reason,
    )


async def replace_players(
    conn: asyncpg.Connection, replay_id: str, players: Sequence[PlayerInfo]
) -> None:
    await conn.executemany(
        "INSERT INTO replay_players (replay_id, player_index, name, team, platform_id, is_bot)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (replay_id, player_index) DO UPDATE"
        " SET name = EXCLUDED.name, team = EXCLUDED.team,"
        " platform_id = EXCLUDED.platform_id, is_bot = EXCLUDED.is_bot",
        [(replay_id, p.index, p.name, p.team, p.platform_id, p.is_bot) for p in players],
    )


async def featurized_replays(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, features_uri FROM replays WHERE status = 'featurized' ORDER BY id"
    )


async def status_counts(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch("SELECT status, count(*) AS n FROM replays GROUP BY status")
    return {row["status"]: row["n"] for row in rows}


# ---------------------------------------------------------------- models


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
) -> ModelRecord:
    row = await conn.fetchrow(
        "INSERT INTO models (name, version, uri, sha256, feature_schema_version, metrics)"
        " VALUES ($1, $2, $3, $4, $5, $6::jsonb) RETURNING *",
        name,
        version,
        uri,
        sha256,
        feature_schema_version,
        json.dumps(metrics),
    )
    return _model(row)


async def promote_model(conn: asyncpg.Connection, model_id: int) -> ModelRecord:
    async with conn.transaction():
        await conn.execute("UPDATE models SET status = 'retired' WHERE status = 'active'")
        row = await conn.fetchrow(
            "UPDATE models SET status = 'active', promoted_at = now() WHERE id = $1 RETURNING *",
            model_id,
        )
    if row is None:
        raise LookupError(f"no model with id {model_id}")
    return _model(row)


async def active_model(conn: asyncpg.Connection) -> ModelRecord | None:
    row = await conn.fetchrow("SELECT * FROM models WHERE status = 'active'")
    return None if row is None else _model(row)


async def list_models(conn: asyncpg.Connection) -> list[ModelRecord]:
    return [_model(row) for row in await conn.fetch("SELECT * FROM models ORDER BY id")]


# ---------------------------------------------------------------- scores


async def insert_scores(
    conn: asyncpg.Connection, rows: Sequence[tuple[str, int, int, float, int]]
) -> None:
    """(replay_id, player_index, model_id, impact, n_frames); existing rows are kept as they are."""
    await conn.executemany(
        "INSERT INTO scores (replay_id, player_index, model_id, impact, n_frames)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        rows,
    )


async def unemitted_scores(
    conn: asyncpg.Connection, replay_id: str, model_id: int
) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT s.player_index, s.impact, s.n_frames, p.name, p.team"
        " FROM scores s JOIN replay_players p USING (replay_id, player_index)"
        " WHERE s.replay_id = $1 AND s.model_id = $2 AND NOT s.emitted ORDER BY s.player_index",
        replay_id,
        model_id,
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
