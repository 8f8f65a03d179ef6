"""asyncpg pool, migrations, and the queries the services share."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from importlib import resources
from typing import Any

import asyncpg

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
    stage: str,
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


# ---------------------------------------------------------------- models


MODEL_KINDS = ("impact", "skill")


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
    kind: str = "impact"  # one of MODEL_KINDS; one active model per kind


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
    kind: str = "impact",
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


async def active_model(conn: asyncpg.Connection, kind: str = "impact") -> ModelRecord | None:
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


@dataclass(frozen=True)
class StoredScore:
    """A score row with its player's name and team, as ``scores.emitted`` announces it."""

    row: ScoreRow
    name: str
    team: int


async def insert_scores(conn: asyncpg.Connection, rows: Sequence[ScoreRow]) -> None:
    """Existing rows (same replay, player and model) are kept as they are."""
    await conn.executemany(
        "INSERT INTO scores (replay_id, player_index, model_id, impact, offence, defence,"
        " n_frames, skill, skill_model_id, impact_per_minute, touches)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
        [
            (
                r.replay_id,
                r.player_index,
                r.model_id,
                r.impact,
                r.offence,
                r.defence,
                r.n_frames,
                r.skill,
                r.skill_model_id,
                r.impact_per_minute,
                r.touches,
            )
            for r in rows
        ],
    )


async def unemitted_scores(
    conn: asyncpg.Connection, replay_id: str, model_id: int
) -> list[StoredScore]:
    rows = await conn.fetch(
        "SELECT s.replay_id, s.player_index, s.model_id, s.impact, s.offence, s.defence,"
        " s.n_frames, s.skill, s.skill_model_id, s.impact_per_minute, s.touches, p.name, p.team"
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


async def unemitted_keys(conn: asyncpg.Connection) -> tuple[set[ScoreKey], datetime | None]:
    """Every score row not marked as announced, and when the oldest was written."""
    rows = await conn.fetch(
        "SELECT replay_id, player_index, model_id, created_at FROM scores WHERE NOT emitted"
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
            await set_status(conn, replay_id, "scorer", "scored")
    return bool(done)


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


# ---------------------------------------------------------------- skill labels


@dataclass(frozen=True)
class PlayerLabel:
    """A rating of one parsed player of one replay (the view ``player_labels``)."""

    replay_id: str
    player_index: int
    player_name: str
    team: int
    skill_rating: float
    source: str


async def player_labels(conn: asyncpg.Connection, source: str | None = None) -> list[PlayerLabel]:
    """Every label whose player the parser has listed; one row per (replay, player, source)."""
    rows = await conn.fetch(
        "SELECT replay_id, player_index, player_name, team, skill_rating, source"
        " FROM player_labels WHERE $1::text IS NULL OR source = $1"
        " ORDER BY replay_id, player_index, source",
        source,
    )
    return [PlayerLabel(**dict(row)) for row in rows]


@dataclass(frozen=True)
class SkillLabel:
    """A rating as imported: the player is named, the replay is its content hash."""

    replay_id: str
    team: int
    player_name: str
    source: str
    skill_rating: float
    rank_tier: int | None = None
    rank_division: int | None = None
    rank_name: str | None = None
    platform_id: str | None = None


@dataclass(frozen=True)
class NameMatch:
    """What Postgres knows about one named player of one replay."""

    name_key: str  # the name as skill_labels compares it
    replay_status: str | None  # None: no such replay
    status_reason: str | None
    parsed: bool  # the parser has listed the replay's players
    player_indexes: tuple[int, ...]  # players of that team with that name


async def match_players(
    conn: asyncpg.Connection, wanted: Sequence[tuple[str, int, str]]
) -> list[NameMatch]:
    """For each (replay_id, team, player name), in order: the players it names."""
    rows = await conn.fetch(
        "SELECT lower(btrim(w.name)) AS name_key, r.status, r.status_reason,"
        " EXISTS (SELECT 1 FROM replay_players a WHERE a.replay_id = w.replay_id) AS parsed,"
        " ARRAY(SELECT p.player_index FROM replay_players p WHERE p.replay_id = w.replay_id"
        "  AND p.team = w.team AND lower(btrim(p.name)) = lower(btrim(w.name))"
        "  ORDER BY p.player_index) AS indexes"
        " FROM unnest($1::text[], $2::smallint[], $3::text[]) WITH ORDINALITY"
        "  AS w(replay_id, team, name, i)"
        " LEFT JOIN replays r ON r.id = w.replay_id ORDER BY w.i",
        [w[0] for w in wanted],
        [w[1] for w in wanted],
        [w[2] for w in wanted],
    )
    return [
        NameMatch(
            name_key=row["name_key"],
            replay_status=row["status"],
            status_reason=row["status_reason"],
            parsed=row["parsed"],
            player_indexes=tuple(row["indexes"]),
        )
        for row in rows
    ]


async def upsert_skill_labels(
    conn: asyncpg.Connection, labels: Sequence[SkillLabel]
) -> tuple[int, int]:
    """Store labels; (inserted, updated). A label equal to the stored one is left as it is.

    Two labels of one batch must not share (replay, source, team, name key)."""
    if not labels:
        return 0, 0
    columns = [f.name for f in fields(SkillLabel)]
    rows = await conn.fetch(
        f"INSERT INTO skill_labels ({', '.join(columns)})"
        " SELECT * FROM unnest($1::text[], $2::smallint[], $3::text[], $4::text[],"
        " $5::float8[], $6::smallint[], $7::smallint[], $8::text[], $9::text[])"
        " ON CONFLICT (replay_id, source, team, name_key) DO UPDATE SET"
        " player_name = EXCLUDED.player_name, skill_rating = EXCLUDED.skill_rating,"
        " rank_tier = EXCLUDED.rank_tier, rank_division = EXCLUDED.rank_division,"
        " rank_name = EXCLUDED.rank_name, platform_id = EXCLUDED.platform_id,"
        " updated_at = now()"
        " WHERE (skill_labels.player_name, skill_labels.skill_rating, skill_labels.rank_tier,"
        " skill_labels.rank_division, skill_labels.rank_name, skill_labels.platform_id)"
        " IS DISTINCT FROM (EXCLUDED.player_name, EXCLUDED.skill_rating, EXCLUDED.rank_tier,"
        " EXCLUDED.rank_division, EXCLUDED.rank_name, EXCLUDED.platform_id)"
        " RETURNING (xmax = 0) AS inserted",
        *([getattr(label, column) for label in labels] for column in columns),
    )
    inserted = sum(row["inserted"] for row in rows)
    return inserted, len(rows) - inserted


@dataclass(frozen=True)
class LabelCounts:
    source: str
    stored: int
    resolved: int  # in player_labels
    waiting: int  # replay not parsed yet
    unresolved: int  # replay parsed (or failed) but no single player of that team and name


async def label_counts(conn: asyncpg.Connection) -> list[LabelCounts]:
    rows = await conn.fetch(
        "SELECT l.source, count(*) AS stored,"
        " count(*) FILTER (WHERE pl.replay_id IS NOT NULL) AS resolved,"
        " count(*) FILTER (WHERE pl.replay_id IS NULL AND r.status <> 'failed' AND NOT EXISTS"
        "  (SELECT 1 FROM replay_players a WHERE a.replay_id = l.replay_id)) AS waiting"
        " FROM skill_labels l JOIN replays r ON r.id = l.replay_id"
        " LEFT JOIN player_labels pl ON pl.replay_id = l.replay_id AND pl.source = l.source"
        "  AND pl.team = l.team AND lower(btrim(pl.player_name)) = l.name_key"
        " GROUP BY l.source ORDER BY l.source"
    )
    return [
        LabelCounts(
            source=row["source"],
            stored=row["stored"],
            resolved=row["resolved"],
            waiting=row["waiting"],
            unresolved=row["stored"] - row["resolved"] - row["waiting"],
        )
        for row in rows
    ]


async def replay_ids_by_filename(
    conn: asyncpg.Connection, filenames: Sequence[str]
) -> dict[str, list[str]]:
    rows = await conn.fetch(
        "SELECT filename, array_agg(id ORDER BY id) AS ids FROM replays"
        " WHERE filename = ANY($1::text[]) GROUP BY filename",
        list(filenames),
    )
    return {row["filename"]: list(row["ids"]) for row in rows}


# ---------------------------------------------------------------- Ballchasing collector


@dataclass(frozen=True)
class BallchasingGroup:
    group_id: str
    parent_id: str | None
    name: str
    children_listed: bool
    replays_next: str | None
    replays_listed: bool


@dataclass(frozen=True)
class BallchasingReplay:
    bc_id: str
    group_id: str
    status: str
    sha256: str | None
    attempts: int
    error: str | None
    metadata: dict[str, Any] | None


_TREE = (
    "WITH RECURSIVE tree AS (SELECT group_id FROM ballchasing_groups WHERE group_id = $1"
    " UNION SELECT g.group_id FROM ballchasing_groups g JOIN tree t ON g.parent_id = t.group_id)"
)


async def record_ballchasing_request(conn: asyncpg.Connection, account: str, kind: str) -> None:
    await conn.execute(
        "INSERT INTO ballchasing_requests (account, kind) VALUES ($1, $2)", account, kind
    )


async def ballchasing_request_ages(
    conn: asyncpg.Connection, account: str, kind: str, window_seconds: float
) -> list[float]:
    """Seconds since each request of this account and kind within the window, oldest first;
    older rows are deleted."""
    await conn.execute(
        "DELETE FROM ballchasing_requests WHERE at < now() - make_interval(secs => $1)",
        window_seconds,
    )
    rows = await conn.fetch(
        "SELECT extract(epoch FROM now() - at)::float8 AS age FROM ballchasing_requests"
        " WHERE account = $1 AND kind = $2 ORDER BY at",
        account,
        kind,
    )
    return [row["age"] for row in rows]


async def upsert_ballchasing_group(
    conn: asyncpg.Connection, group_id: str, parent_id: str | None, name: str
) -> None:
    await conn.execute(
        "INSERT INTO ballchasing_groups (group_id, parent_id, name) VALUES ($1, $2, $3)"
        " ON CONFLICT (group_id) DO UPDATE SET"
        " parent_id = COALESCE(EXCLUDED.parent_id, ballchasing_groups.parent_id),"
        " name = EXCLUDED.name, updated_at = now()",
        group_id,
        parent_id,
        name,
    )


async def ballchasing_group(conn: asyncpg.Connection, group_id: str) -> BallchasingGroup | None:
    row = await conn.fetchrow(
        "SELECT group_id, parent_id, name, children_listed, replays_next, replays_listed"
        " FROM ballchasing_groups WHERE group_id = $1",
        group_id,
    )
    return None if row is None else BallchasingGroup(**dict(row))


async def ballchasing_children(conn: asyncpg.Connection, group_id: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT group_id FROM ballchasing_groups WHERE parent_id = $1 ORDER BY group_id",
        group_id,
    )
    return [row["group_id"] for row in rows]


async def set_ballchasing_group_progress(
    conn: asyncpg.Connection,
    group_id: str,
    *,
    children_listed: bool | None = None,
    replays_next: str | None = None,
    replays_listed: bool | None = None,
) -> None:
    """Record listing progress; replays_next is always set (None: start from the first page)."""
    await conn.execute(
        "UPDATE ballchasing_groups SET children_listed = COALESCE($2, children_listed),"
        " replays_next = $3, replays_listed = COALESCE($4, replays_listed), updated_at = now()"
        " WHERE group_id = $1",
        group_id,
        children_listed,
        replays_next,
        replays_listed,
    )


async def reset_ballchasing_listing(conn: asyncpg.Connection, root: str) -> None:
    """List the groups under root again (to find replays added since)."""
    await conn.execute(
        f"{_TREE} UPDATE ballchasing_groups SET children_listed = false, replays_next = NULL,"
        " replays_listed = false WHERE group_id IN (SELECT group_id FROM tree)",
        root,
    )


async def add_ballchasing_replays(
    conn: asyncpg.Connection, group_id: str, bc_ids: Sequence[str]
) -> int:
    """Record listed replays; returns how many were new."""
    rows = await conn.fetch(
        "INSERT INTO ballchasing_replays (bc_id, group_id) SELECT unnest($2::text[]), $1"
        " ON CONFLICT (bc_id) DO NOTHING RETURNING bc_id",
        group_id,
        list(bc_ids),
    )
    return len(rows)


def _bc_replay(row: asyncpg.Record) -> BallchasingReplay:
    metadata = row["metadata"]
    return BallchasingReplay(
        bc_id=row["bc_id"],
        group_id=row["group_id"],
        status=row["status"],
        sha256=row["sha256"],
        attempts=row["attempts"],
        error=row["error"],
        metadata=None if metadata is None else json.loads(metadata),
    )


async def ballchasing_replays(conn: asyncpg.Connection, root: str) -> list[BallchasingReplay]:
    """Every replay listed under root and its child groups, in listing order."""
    rows = await conn.fetch(
        f"{_TREE} SELECT * FROM ballchasing_replays"
        " WHERE group_id IN (SELECT group_id FROM tree) ORDER BY listed_at, bc_id",
        root,
    )
    return [_bc_replay(row) for row in rows]


async def update_ballchasing_replay(
    conn: asyncpg.Connection,
    bc_id: str,
    status: str,
    *,
    sha256: str | None = None,
    error: str | None = None,
    metadata: dict[str, Any] | None = None,
    attempt: bool = False,
) -> BallchasingReplay:
    """Set status and error; sha256 and metadata are kept when not given."""
    row = await conn.fetchrow(
        "UPDATE ballchasing_replays SET status = $2, sha256 = COALESCE($3, sha256), error = $4,"
        " metadata = COALESCE($5::jsonb, metadata), attempts = attempts + $6::int,"
        " updated_at = now() WHERE bc_id = $1 RETURNING *",
        bc_id,
        status,
        sha256,
        error,
        None if metadata is None else json.dumps(metadata),
        int(attempt),
    )
    return _bc_replay(row)


async def ballchasing_replay_ids(conn: asyncpg.Connection, bc_ids: Sequence[str]) -> dict[str, str]:
    """Ballchasing id -> content hash, for the downloaded ones."""
    rows = await conn.fetch(
        "SELECT bc_id, sha256 FROM ballchasing_replays"
        " WHERE bc_id = ANY($1::text[]) AND sha256 IS NOT NULL",
        list(bc_ids),
    )
    return {row["bc_id"]: row["sha256"] for row in rows}
