"""The stored replays scored with the active impact model, and each one's report page.

``GET /replays[?page=N]`` lists them from Postgres, newest score first, ``PER_PAGE`` a page.
``GET /replays/{id}`` is the page ``rlimpact report`` writes for the replay (the same
``report_html``), rendered from its stored feature table (through the blob store, as the
scorer reads it) and the active model, on first request; the last ``CACHED_REPORTS`` pages
are kept, by replay and model, so a promotion renders afresh.

Postgres is reached through a small pool of this module's own, made on the first request
and again after a failure: when Postgres is down the pages say so (HTTP 503) at once,
and the live page and score streams, which need no database, go on.
"""

from __future__ import annotations

import asyncio
import html
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
from aiohttp import web

from shared import db
from shared.db import ModelRecord
from shared.features.dataset import read_stored_features
from shared.features.table import FeatureTable
from shared.impact import ScoredReplay, score_replay
from shared.model import ImpactModel
from shared.report import STYLE, report_html, report_notes
from shared.settings import Settings
from shared.storage import BlobStoreUnavailable, open_blob_store, open_checked

log = logging.getLogger(__name__)
PER_PAGE = 50
CACHED_REPORTS = 32
PG_TIMEOUT_SECONDS = 3.0
REPLAY_ID = re.compile(r"[0-9a-f]{64}")
T = TypeVar("T")
# what asyncpg raises when Postgres is gone: refused, reset, or (a pooled connection whose
# server went away mid-protocol) an internal client error
_CONNECTION_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)


class CatalogUnavailable(RuntimeError):
    """Postgres or the blob store cannot be reached now."""


@dataclass(frozen=True)
class ScoredReplayRow:
    replay_id: str
    filename: str
    team_size: int | None
    players: int
    scored_at: str  # ISO time of its newest score row


@dataclass(frozen=True)
class Pages:
    number: int  # 1-based, clamped to [1, count]
    count: int
    total: int  # replays

    @property
    def offset(self) -> int:
        return (self.number - 1) * PER_PAGE


def paginate(total: int, requested: int) -> Pages:
    count = max(1, -(-total // PER_PAGE))
    return Pages(min(max(1, requested), count), count, total)


def requested_page(raw: str | None) -> int:
    try:
        return int(raw) if raw is not None else 1
    except ValueError:
        return 1


def message_page(title: str, text: str) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f'<h1>{html.escape(title)}</h1><p id="message">{html.escape(text)}</p>'
        '<p><a href="/">the live page</a></p></body></html>\n'
    )


def replay_list_html(rows: list[ScoredReplayRow], pages: Pages, model_version: str) -> str:
    items = "".join(
        f'<tr><td><a class="report" href="/replays/{r.replay_id}">{html.escape(r.filename)}</a>'
        f"</td><td>{r.team_size or '?'}v{r.team_size or '?'}</td><td>{r.players}</td>"
        f"<td>{html.escape(r.scored_at)}</td><td><code>{r.replay_id[:12]}</code></td></tr>"
        for r in rows
    )
    links = []
    if pages.number > 1:
        links.append(f'<a rel="prev" href="/replays?page={pages.number - 1}">newer</a>')
    if pages.number < pages.count:
        links.append(f'<a rel="next" href="/replays?page={pages.number + 1}">older</a>')
    head = "".join(f"<th>{h}</th>" for h in ("replay", "size", "players", "scored", "id"))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>rlimpact: scored replays</title><style>{STYLE}</style></head><body>"
        f"<h1>Scored replays</h1><p>{pages.total} replays scored with model "
        f"{html.escape(model_version)}; page {pages.number} of {pages.count}.</p>"
        f'<table id="replays"><thead><tr>{head}</tr></thead><tbody>{items}</tbody></table>'
        f'<p id="pages">{" · ".join(links)}</p><p><a href="/">the live page</a></p>'
        "</body></html>\n"
    )


def replay_report_html(
    filename: str,
    team_size: int | None,
    model_version: str,
    table: FeatureTable,
    scored: ScoredReplay,
) -> str:
    """The page of ``rlimpact report``, with its title and notes."""
    notes = report_notes(model_version, table.map_name, table.game_mode)
    size = f"{team_size}v{team_size}" if team_size else "size unknown"
    title = (
        f"{filename}: {size}, {table.game_mode or 'mode unknown'} on "
        f"{table.map_name or 'an unknown arena'}"
    )
    return report_html(table, scored, title, notes)


class ReplayCatalog:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = open_blob_store(settings)
        self._pool: asyncpg.Pool | None = None
        self._model: tuple[int, ImpactModel] | None = None  # the active one, once loaded
        self._reports: OrderedDict[tuple[str, int], str] = OrderedDict()
        self._rendering = asyncio.Lock()  # one report at a time: the live scoring keeps the CPU

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _connect(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self.settings.pg_dsn, min_size=0, max_size=2, timeout=PG_TIMEOUT_SECONDS
            )
        return self._pool

    async def _run(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(PG_TIMEOUT_SECONDS * 2):
                pool = await self._connect()
                async with pool.acquire() as conn:
                    return await work(conn)
        except _CONNECTION_ERRORS as error:
            self._drop_pool()
            reason = str(error) or type(error).__name__
            where = f"{self.settings.pg_host}:{self.settings.pg_port}"
            raise CatalogUnavailable(f"Postgres at {where} cannot be reached: {reason}") from error

    async def _query(self, sql: str, *args: object) -> list[asyncpg.Record]:
        return await self._run(lambda conn: conn.fetch(sql, *args))

    def _drop_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()

    async def active_model(self) -> ModelRecord | None:
        return await self._run(lambda conn: db.active_model(conn, "impact"))

    async def page(self, model: ModelRecord, requested: int) -> tuple[list[ScoredReplayRow], Pages]:
        (count,) = await self._query(
            "SELECT count(DISTINCT replay_id) AS n FROM scores WHERE model_id = $1", model.id
        )
        pages = paginate(count["n"], requested)
        rows = await self._query(
            "SELECT r.id, r.filename, r.team_size, count(*) AS players,"
            " max(s.created_at) AS scored_at FROM scores s JOIN replays r ON r.id = s.replay_id"
            " WHERE s.model_id = $1 GROUP BY r.id ORDER BY scored_at DESC, r.id"
            " LIMIT $2 OFFSET $3",
            model.id,
            PER_PAGE,
            pages.offset,
        )
        listed = [
            ScoredReplayRow(
                r["id"],
                r["filename"],
                r["team_size"],
                r["players"],
                r["scored_at"].isoformat(timespec="seconds"),
            )
            for r in rows
        ]
        return listed, pages

    async def report(self, model: ModelRecord, replay_id: str) -> str | None:
        """The replay's report page; None if it has no score row with ``model``."""
        key = (replay_id, model.id)
        if (cached := self._reports.get(key)) is not None:
            self._reports.move_to_end(key)
            return cached
        rows = await self._query(
            "SELECT r.filename, r.team_size, r.features_uri FROM replays r"
            " WHERE r.id = $1 AND r.features_uri IS NOT NULL AND EXISTS"
            " (SELECT 1 FROM scores s WHERE s.replay_id = r.id AND s.model_id = $2)",
            replay_id,
            model.id,
        )
        if not rows:
            return None
        async with self._rendering:
            page = await asyncio.to_thread(self._render, model, rows[0])
        self._reports[key] = page
        while len(self._reports) > CACHED_REPORTS:
            self._reports.popitem(last=False)
        return page

    def _render(self, model: ModelRecord, row: asyncpg.Record) -> str:
        try:
            impact = self._load_model(model)
            table = read_stored_features(self.store, row["features_uri"])
        except BlobStoreUnavailable as error:
            raise CatalogUnavailable(f"the blob store cannot be reached: {error}") from error
        return replay_report_html(
            row["filename"], row["team_size"], model.version, table, score_replay(table, impact)
        )

    def _load_model(self, model: ModelRecord) -> ImpactModel:
        if self._model is None or self._model[0] != model.id:
            with open_checked(self.store, model.uri, model.sha256) as path:
                self._model = (model.id, ImpactModel(path))
        return self._model[1]


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html")


def replay_routes(app: web.Application, catalog: ReplayCatalog) -> None:
    async def listing(request: web.Request) -> web.Response:
        try:
            model = await catalog.active_model()
            if model is None:
                return _html(message_page("Scored replays", "No impact model is active yet."))
            rows, pages = await catalog.page(model, requested_page(request.query.get("page")))
        except CatalogUnavailable as error:
            return _unavailable(error)
        return _html(replay_list_html(rows, pages, model.version))

    async def report(request: web.Request) -> web.Response:
        replay_id = request.match_info["replay_id"]
        if not REPLAY_ID.fullmatch(replay_id):
            return _html(message_page("No such replay", f"{replay_id!r} is no replay id."), 404)
        try:
            model = await catalog.active_model()
            page = await catalog.report(model, replay_id) if model else None
        except CatalogUnavailable as error:
            return _unavailable(error)
        except (OSError, ValueError) as error:  # features gone or of another schema, a bad model
            log.warning("report of %s not rendered: %s", replay_id, error)
            text = f"The report of {replay_id} cannot be rendered: {error}"
            return _html(message_page("Report unavailable", text), 500)
        if page is None:
            text = (
                f"Replay {replay_id} has no scores with the active impact model "
                "(or no stored features)."
            )
            return _html(message_page("No such replay", text), 404)
        return _html(page)

    app.router.add_get("/replays", listing)
    app.router.add_get("/replays/{replay_id}", report)


def _unavailable(error: CatalogUnavailable) -> web.Response:
    log.warning("replay pages unavailable: %s", error)
    text = f"{error}. Live matches are still shown on the live page; try again later."
    response = _html(message_page("Replays unavailable", text), 503)
    response.headers["Retry-After"] = "5"
    return response
