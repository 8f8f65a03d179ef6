"""asyncpg pool, migrations, and the queries the services share: replays and their status
here; models and scores, skill labels and the Ballchasing collector in their own modules,
all reachable as ``db.<name>``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import asyncpg

# the queries of the other owners, reachable as db.<name> as before
from shared.db.ballchasing import (
    BallchasingGroup as BallchasingGroup,
)
from shared.db.ballchasing import (
    BallchasingReplay as BallchasingReplay,
)
from shared.db.ballchasing import (
    add_ballchasing_replays as add_ballchasing_replays,
)
from shared.db.ballchasing import (
    ballchasing_children as ballchasing_children,
)
from shared.db.ballchasing import (
    ballchasing_group as ballchasing_group,
)
from shared.db.ballchasing import (
    ballchasing_replay_ids as ballchasing_replay_ids,
)
from shared.db.ballchasing import (
    ballchasing_replays as ballchasing_replays,
)
from shared.db.ballchasing import (
    ballchasing_request_ages as ballchasing_request_ages,
)
from shared.db.ballchasing import (
    record_ballchasing_request as record_ballchasing_request,
)
from shared.db.ballchasing import (
    reset_ballchasing_listing as reset_ballchasing_listing,
)
from shared.db.ballchasing import (
    set_ballchasing_group_progress as set_ballchasing_group_progress,
)
from shared.db.ballchasing import (
    update_ballchasing_replay as update_ballchasing_replay,
)
from shared.db.ballchasing import (
    upsert_ballchasing_group as upsert_ballchasing_group,
)
from shared.db.labels import (
    LabelCounts as LabelCounts,
)
from shared.db.labels import (
    NameMatch as NameMatch,
)
from shared.db.labels import (
    PlayerLabel as PlayerLabel,
)
from shared.db.labels import (
    SkillLabel as SkillLabel,
)
from shared.db.labels import (
    label_counts as label_counts,
)
from shared.db.labels import (
    match_players as match_players,
)
from shared.db.labels import (
    player_labels as player_labels,
)
from shared.db.labels import (
    replay_ids_by_filename as replay_ids_by_filename,
)
from shared.db.labels import (
    upsert_skill_labels as upsert_skill_labels,
)
from shared.db.models import (
    MODEL_KINDS as MODEL_KINDS,
)
from shared.db.models import (
    ModelRecord as ModelRecord,
)
from shared.db.models import (
    ScoreKey as ScoreKey,
)
from shared.db.models import (
    ScoreRow as ScoreRow,
)
from shared.db.models import (
    StoredScore as StoredScore,
)
from shared.db.models import (
    active_model as active_model,
)
from shared.db.models import (
    find_model as find_model,
)
from shared.db.models import (
    finish_train_job as finish_train_job,
)
from shared.db.models import (
    insert_scores as insert_scores,
)
from shared.db.models import (
    list_models as list_models,
)
from shared.db.models import (
    mark_emitted as mark_emitted,
)
from shared.db.models import (
    mark_keys_emitted as mark_keys_emitted,
)
from shared.db.models import (
    promote_model as promote_model,
)
from shared.db.models import (
    register_model as register_model,
)
from shared.db.models import (
    replays_scored_with as replays_scored_with,
)
from shared.db.models import (
    start_train_job as start_train_job,
)
from shared.db.models import (
    unemitted_keys as unemitted_keys,
)
from shared.db.models import (
    unemitted_scores as unemitted_scores,
)
from shared.events import PlayerInfo, ReplayUploaded
from shared.settings import Settings

MIGRATIONS_PACKAGE = "shared.migrations"
CONNECT_TIMEOUT_SECONDS = 10.0


async def connect(settings: Settings, *, min_size: int = 1, max_size: int = 4) -> asyncpg.Pool:
    """A pool; a connection broken by a Postgres restart is replaced on its next acquire, and
    the query that found it broken fails with a transient error (see :mod:`shared.retry`)."""
    pool = await asyncpg.create_pool(
        settings.pg_dsn, min_size=min_size, max_size=max_size, timeout=CONNECT_TIMEOUT_SECONDS
    )
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
    stage: str,  # a Stage (shared/events.py), as the failures record it, or "recovery"
    status: str,
    reason: str | None = None,
    *,
    only_from: Sequence[str] | None = None,
    **columns: Any,
) -> None:
    """Set a replay's status and record the change; a replay with no row (rejected at ingest,
    before it was recorded) has no status to set. With ``only_from``, only a replay in one of
    those states changes (a later stage may have moved it on already)."""
    assignments = "".join(f", {name} = ${i}" for i, name in enumerate(columns, start=5))
    updated = await conn.fetchval(
        f"UPDATE replays SET status = $2, status_reason = $3, updated_at = now(){assignments}"
        " WHERE id = $1 AND ($4::text[] IS NULL OR status = ANY($4::text[])) RETURNING id",
        replay_id,
        status,
        reason,
        None if only_from is None else list(only_from),
        *columns.values(),
    )
    if updated is not None:
        await _record_status(conn, replay_id, stage, status, reason)


async def _record_status(
    conn: asyncpg.Connection, replay_id: str, stage: str, status: str, reason: str | None
) -> None:
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


# ---------------------------------------------------------------- recovery

# Statuses after which nothing more happens to a replay (`scored` from migration 006 on).
FINAL_STATUSES = ("scored", "failed")

_REPLAY_STATE = (
    "SELECT r.id, r.status, r.status_reason, r.filename, r.uri, r.size_bytes, r.source,"
    " r.frames_uri, r.features_uri, r.n_frames,"
    " extract(epoch FROM now() - r.updated_at)::float8 AS idle_seconds,"
    " EXISTS (SELECT 1 FROM scores s JOIN models m ON m.id = s.model_id"
    "  WHERE s.replay_id = r.id AND m.status = 'active' AND m.kind = 'impact')"
    "  AS scored_by_active,"
    " EXISTS (SELECT 1 FROM models WHERE status = 'active' AND kind = 'impact') AS model_active"
    " FROM replays r"
)


async def unfinished_replays(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Every replay neither scored nor failed, oldest change first (the reconciler's list)."""
    return await conn.fetch(
        f"{_REPLAY_STATE} WHERE r.status <> ALL($1::text[]) ORDER BY r.updated_at",
        list(FINAL_STATUSES),
    )


async def failed_replays(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(f"{_REPLAY_STATE} WHERE r.status = 'failed' ORDER BY r.updated_at")


async def replay_states(
    conn: asyncpg.Connection, replay_ids: Sequence[str]
) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"{_REPLAY_STATE} WHERE r.id = ANY($1::text[]) ORDER BY r.id", list(replay_ids)
    )


async def replay_ids_with_prefix(
    conn: asyncpg.Connection, prefix: str, limit: int = 5
) -> list[str]:
    """Ids that start with ``prefix`` (lower-case hex, so no LIKE wildcards), at most ``limit``."""
    rows = await conn.fetch(
        "SELECT id FROM replays WHERE starts_with(id, $1) ORDER BY id LIMIT $2", prefix, limit
    )
    return [row["id"] for row in rows]


async def replay_players(conn: asyncpg.Connection, replay_id: str) -> list[PlayerInfo]:
    rows = await conn.fetch(
        "SELECT player_index, name, team, platform_id, is_bot FROM replay_players"
        " WHERE replay_id = $1 ORDER BY player_index",
        replay_id,
    )
    return [
        PlayerInfo(
            index=row["player_index"],
            name=row["name"],
            team=row["team"],
            platform_id=row["platform_id"],
            is_bot=row["is_bot"],
        )
        for row in rows
    ]


async def stored_replay(conn: asyncpg.Connection, replay_id: str) -> asyncpg.Record | None:
    """The replay's status and where its blobs are (``uri``: its bytes, stored at ingest)."""
    return await conn.fetchrow(
        "SELECT status, uri, frames_uri, features_uri FROM replays WHERE id = $1", replay_id
    )


async def move_status(
    conn: asyncpg.Connection, replay_id: str, expected: str, status: str, stage: str, reason: str
) -> bool:
    """Set the status (and touch ``updated_at``) only if it is still ``expected``; record it.
    False when the replay moved on meanwhile (then nothing changes)."""
    updated = await conn.fetchval(
        "UPDATE replays SET status = $3, status_reason = $4, updated_at = now()"
        " WHERE id = $1 AND status = $2 RETURNING id",
        replay_id,
        expected,
        status,
        reason,
    )
    if updated is None:
        return False
    await _record_status(conn, replay_id, stage, status, reason)
    return True


async def mark_scored(conn: asyncpg.Connection, replay_id: str, model_id: int) -> bool:
    """Set the replay ``scored`` when every score row of this model is announced; True if set
    now (False: already scored, rows still unannounced, or not featurized yet)."""
    async with conn.transaction():
        done = await conn.fetchval(
            "SELECT r.status IN ('featurized', 'failed') AND NOT EXISTS (SELECT 1 FROM scores s"
            " WHERE s.replay_id = r.id AND s.model_id = $2 AND NOT s.emitted)"
            " AND EXISTS (SELECT 1 FROM scores s WHERE s.replay_id = r.id AND s.model_id = $2)"
            " FROM replays r WHERE r.id = $1 FOR UPDATE",
            replay_id,
            model_id,
        )
        if done:
            await set_status(conn, replay_id, "score", "scored")
    return bool(done)


async def featurized_replays(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Replays with a feature table: featurized, and maybe scored already."""
    return await conn.fetch(
        "SELECT id, features_uri FROM replays WHERE status IN ('featurized', 'scored') ORDER BY id"
    )


async def status_counts(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch("SELECT status, count(*) AS n FROM replays GROUP BY status")
    return {row["status"]: row["n"] for row in rows}


# ---------------------------------------------------------------- ingested objects


@dataclass(frozen=True)
class IngestedObject:
    """An object (bucket key + etag, or submitted file) the ingestor has dealt with."""

    uri: str
    etag: str
    size_bytes: int
    source: str
    outcome: str  # 'new', 'duplicate' or 'rejected'
    replay_id: str
    reason: str | None = None


async def record_ingested_object(conn: asyncpg.Connection, obj: IngestedObject) -> None:
    await conn.execute(
        "INSERT INTO ingest_objects (uri, etag, size_bytes, source, outcome, replay_id, reason)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        obj.uri,
        obj.etag,
        obj.size_bytes,
        obj.source,
        obj.outcome,
        obj.replay_id,
        obj.reason,
    )


async def ingested_versions(conn: asyncpg.Connection, uris: Sequence[str]) -> set[tuple[str, str]]:
    """The (uri, etag) pairs among ``uris`` already dealt with."""
    rows = await conn.fetch(
        "SELECT uri, etag FROM ingest_objects WHERE uri = ANY($1::text[])", list(uris)
    )
    return {(row["uri"], row["etag"]) for row in rows}
