"""The Ballchasing collector's state: requests, groups and their replays."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg


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
