"""Ballchasing.com collector: download every replay of a group and its child groups.

The collector records what it has listed and done in Postgres (``ballchasing_groups``,
``ballchasing_replays``), so a run that is killed or meets a failing server continues where it
stopped when run again: listing resumes at the page it reached, finished replays are not
downloaded again, and a downloaded file waiting to be ingested is kept in the staging folder.
Files enter the pipeline through the ingestor's :func:`ingest_file` (one dedupe by content
hash), and the players' ranks or MMRs become skill labels (source ``ballchasing``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from services.ingestor.collector.client import (
    HOUR,
    PAGE_SIZE,
    BallchasingAuthError,
    BallchasingClient,
    BallchasingError,
    BallchasingUnavailable,
    Kind,
    account_of,
)
from services.ingestor.collector.labels import BcReplay, import_labels, labels_from_ballchasing
from services.ingestor.service import ingest_file
from shared import db
from shared.service import ServiceContext
from shared.storage import open_blob_store, sha256_file

log = logging.getLogger("ballchasing")


# ---------------------------------------------------------------- collector


@dataclass
class CollectReport:
    groups: int = 0
    listed_new: int = 0
    replays: int = 0  # listed under the root, all runs
    already_done: int = 0
    ingested_new: int = 0
    duplicates: int = 0  # content the pipeline already had
    labels_stored: int = 0
    labels_waiting: int = 0  # replay not parsed yet
    unrated_players: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    given_up: int = 0  # failed in earlier runs ballchasing_max_attempts times
    requests: int = 0
    waited_seconds: float = 0.0


class Collector:
    """Lists a group tree into Postgres, then downloads, ingests and labels each replay."""

    def __init__(self, ctx: ServiceContext, client: BallchasingClient) -> None:
        self.ctx = ctx
        self.client = client
        self.store = open_blob_store(ctx.settings)
        self.staging = ctx.settings.data_dir / "ballchasing"
        self.report = CollectReport()

    # -- listing

    async def list_tree(
        self, root: str, refresh: bool = False, on_listed: Callable[[int], None] | None = None
    ) -> None:
        """Record root, its child groups (recursively) and their replays. Listing already
        finished in an earlier run is not repeated unless ``refresh``."""
        async with self.ctx.pool.acquire() as conn:
            known = await db.ballchasing_group(conn, root)
        if known is None:
            group = await self.client.get_json(f"/groups/{root}")
            name = group.get("name", "") if isinstance(group, dict) else ""
            async with self.ctx.pool.acquire() as conn:
                await db.upsert_ballchasing_group(conn, root, None, str(name))
        elif refresh:
            async with self.ctx.pool.acquire() as conn:
                await db.reset_ballchasing_listing(conn, root)
        pending = [root]
        while pending:
            group_id = pending.pop()
            self.report.groups += 1
            async with self.ctx.pool.acquire() as conn:
                group = await db.ballchasing_group(conn, group_id)
            assert group is not None
            if not group.children_listed:
                await self._list_children(group_id)
            if not group.replays_listed:
                await self._list_replays(group, on_listed)
            async with self.ctx.pool.acquire() as conn:
                pending.extend(reversed(await db.ballchasing_children(conn, group_id)))

    async def _list_children(self, group_id: str) -> None:
        params = {"group": group_id, "count": PAGE_SIZE}
        async for entries in self.client.pages("/groups", params):
            async with self.ctx.pool.acquire() as conn:
                for child in entries:
                    if isinstance(child, dict) and isinstance(child.get("id"), str):
                        name = str(child.get("name", ""))
                        await db.upsert_ballchasing_group(conn, child["id"], group_id, name)
        async with self.ctx.pool.acquire() as conn:
            await db.set_ballchasing_group_progress(conn, group_id, children_listed=True)

    async def _list_replays(
        self, group: db.BallchasingGroup, on_listed: Callable[[int], None] | None
    ) -> None:
        if group.replays_next:
            entries, next_url = await self.client.page(group.replays_next)
        else:
            params = {"group": group.group_id, "count": PAGE_SIZE}
            entries, next_url = await self.client.page("/replays", params)
        while True:
            ids = [r["id"] for r in entries if isinstance(r, dict) and isinstance(r.get("id"), str)]
            async with self.ctx.pool.acquire() as conn, conn.transaction():
                new = await db.add_ballchasing_replays(conn, group.group_id, ids)
                await db.set_ballchasing_group_progress(
                    conn, group.group_id, replays_next=next_url or None, replays_listed=not next_url
                )
            self.report.listed_new += new
            if on_listed is not None:
                on_listed(len(ids))
            if not next_url:
                return
            entries, next_url = await self.client.page(next_url)

    # -- replays

    async def todo(self, root: str) -> list[db.BallchasingReplay]:
        """Replays under root still to do: not ingested, and not given up on."""
        async with self.ctx.pool.acquire() as conn:
            items = await db.ballchasing_replays(conn, root)
        limit = self.ctx.settings.ballchasing_max_attempts
        self.report.replays = len(items)
        self.report.already_done = sum(item.status == "ingested" for item in items)
        self.report.given_up = sum(
            item.status == "failed" and item.attempts >= limit for item in items
        )
        return [
            item
            for item in items
            if item.status != "ingested"
            and not (item.status == "failed" and item.attempts >= limit)
        ]

    async def process(self, item: db.BallchasingReplay) -> None:
        """Metadata, file, ingest, labels for one replay; a replay-specific failure is recorded
        on its row and the run goes on."""
        async with self.ctx.pool.acquire() as conn:
            item = await db.update_ballchasing_replay(
                conn, item.bc_id, item.status, error=item.error, attempt=True
            )
        try:
            await self._process(item)
        except BallchasingAuthError:
            raise
        except BallchasingError as error:
            reason = str(error)
            log.warning("replay %s failed: %s", item.bc_id, reason)
            self.report.failed.append((item.bc_id, reason))
            async with self.ctx.pool.acquire() as conn:
                await db.update_ballchasing_replay(conn, item.bc_id, "failed", error=reason)
        except BallchasingUnavailable as error:
            async with self.ctx.pool.acquire() as conn:
                await db.update_ballchasing_replay(conn, item.bc_id, item.status, error=str(error))
            raise

    async def _process(self, item: db.BallchasingReplay) -> None:
        metadata = item.metadata
        if metadata is None:
            metadata = await self.client.get_json(f"/replays/{item.bc_id}")
            if not isinstance(metadata, dict):
                raise BallchasingError("replay metadata is not a JSON object")
            async with self.ctx.pool.acquire() as conn:
                await db.update_ballchasing_replay(
                    conn, item.bc_id, item.status, error=item.error, metadata=metadata
                )
        path = self.staging / f"{item.bc_id}.replay"
        sha = item.sha256
        if not (item.status == "downloaded" and sha and await _holds(path, sha)):
            download = await self.client.download(
                item.bc_id, path, self.ctx.settings.max_replay_bytes
            )
            sha = download.sha256
            async with self.ctx.pool.acquire() as conn:
                await db.update_ballchasing_replay(conn, item.bc_id, "downloaded", sha256=sha)
        assert sha is not None
        result = await ingest_file(
            path,
            self.store,
            self.ctx,
            source="ballchasing",
            uri=self.client.url(f"/replays/{item.bc_id}/file"),
        )
        if result.outcome == "rejected":
            raise BallchasingError(f"rejected at ingest: {result.reason}")
        self.report.ingested_new += result.outcome == "new"
        self.report.duplicates += result.outcome == "duplicate"
        await self._store_labels(item.bc_id, sha, metadata)
        async with self.ctx.pool.acquire() as conn:
            await db.update_ballchasing_replay(conn, item.bc_id, "ingested")
        path.unlink(missing_ok=True)

    async def _store_labels(self, bc_id: str, sha: str, metadata: dict[str, Any]) -> None:
        try:
            replay = BcReplay.model_validate(metadata)
        except ValidationError as error:
            log.warning("replay %s: metadata without players/ranks: %s", bc_id, error)
            return
        rows, unrated = labels_from_ballchasing(replay)
        self.report.unrated_players += unrated
        async with self.ctx.pool.acquire() as conn:
            labels = await import_labels(conn, rows, "ballchasing", known={bc_id: [sha]})
        self.report.labels_stored += labels.stored
        self.report.labels_waiting += len(labels.waiting)
        for unmatched in labels.unmatched_player:
            log.warning("replay %s: label not stored: %s", bc_id, unmatched.reason)


async def _holds(path: Path, sha: str) -> bool:
    return path.exists() and await asyncio.to_thread(sha256_file, path) == sha


async def persisted_budget(
    ctx: ServiceContext, token: str
) -> tuple[dict[Kind, list[float]], Callable[[Kind], Awaitable[None]]]:
    """The ages of this account's requests in the last hour, and a hook that records each new
    request, so that the hourly budget holds across runs."""
    account = account_of(token)
    async with ctx.pool.acquire() as conn:
        ages: dict[Kind, list[float]] = {
            kind: await db.ballchasing_request_ages(conn, account, kind, HOUR)
            for kind in ("call", "download")
        }

    async def record(kind: Kind) -> None:
        async with ctx.pool.acquire() as conn:
            await db.record_ballchasing_request(conn, account, kind)

    return ages, record
