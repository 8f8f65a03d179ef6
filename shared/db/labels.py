"""Skill labels: ratings of parsed players, matched by name, and their counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import asyncpg


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
