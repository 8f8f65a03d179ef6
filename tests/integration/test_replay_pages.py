"""The live service's replay pages on the real stack: a replay dropped in the inbox is parsed,
featurized and scored by the services; ``/replays`` lists it (from Postgres) and links to its
report, rendered by the live service from the stored features through the blob store, which
shows the match in headless Chromium like the page ``rlimpact report`` writes."""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import asyncpg
import numpy as np
import pytest
from aiohttp import web
from PIL import Image

from services.live.replays import PER_PAGE, ReplayCatalog
from services.live.web import ScoreHub, web_app
from shared import db
from shared.settings import REPO_ROOT, Settings
from tests.integration.conftest import PORT_OFFSET, Stack, wait_for
from tests.integration.test_hostile_inbox import _forget as forget
from tests.support.chromium import headless_chromium

pytestmark = pytest.mark.integration

BLUE, ORANGE = (31, 119, 180), (255, 127, 14)
SCORED_TIMEOUT = 300.0


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with headless_chromium("1100,1400") as driver:
        yield driver


async def _active_impact_model(stack: Stack, pg: asyncpg.Connection) -> int:
    """The active impact model's id; the shipped one is registered and promoted if none is."""

    async def migrated() -> bool:
        return await pg.fetchval("SELECT to_regclass('public.scores') IS NOT NULL")

    await wait_for(migrated, 120, "the services to apply the migrations")
    active = "SELECT id FROM models WHERE kind = 'impact' AND status = 'active'"
    if (model_id := await pg.fetchval(active)) is not None:
        return model_id
    shipped = Settings().default_model_dir / "impact.onnx"
    registered = stack.cli("models", "register", str(shipped), "--promote")
    assert registered.returncode == 0, registered.stderr
    return await pg.fetchval(active)


async def test_a_scored_replay_is_listed_and_its_report_renders(
    stack: Stack, pg: asyncpg.Connection, standard_replay, browser
):

    model_id = await _active_impact_model(stack, pg)
    inbox = stack.settings.inbox_dir

    async def inbox_ready() -> bool:
        return inbox.exists()

    await wait_for(inbox_ready, 60, "the ingestor to create its inbox")
    replay_id = standard_replay.sha256
    known = await pg.fetchval("SELECT count(*) FROM replays WHERE id = $1", replay_id)
    shutil.copy(standard_replay.path, inbox / standard_replay.path.name)
    try:
        await _check_pages(stack, pg, standard_replay, browser, model_id)
    finally:
        if not known:  # the tests after this one find the stack as it was
            await forget(pg, replay_id)


async def _check_pages(
    stack: Stack, pg: asyncpg.Connection, standard_replay, browser, model_id: int
) -> None:
    from selenium.webdriver.common.by import By

    replay_id = standard_replay.sha256

    async def scored() -> int:
        return await pg.fetchval(
            "SELECT count(*) FROM scores WHERE replay_id = $1 AND model_id = $2",
            replay_id,
            model_id,
        )

    n_players = await wait_for(scored, SCORED_TIMEOUT, "the replay to be scored")
    base = f"http://127.0.0.1:{stack.settings.live_http_port}"
    await asyncio.to_thread(browser.get, f"{base}/replays")
    listed = browser.find_elements(By.CSS_SELECTOR, "#replays a.report")
    total = await pg.fetchval(
        "SELECT count(DISTINCT replay_id) FROM scores WHERE model_id = $1", model_id
    )
    assert len(listed) == min(total, PER_PAGE)
    (link,) = [a for a in listed if a.get_attribute("href").endswith(f"/replays/{replay_id}")]
    assert link.text == standard_replay.path.name
    row = link.find_element(By.XPATH, "./ancestor::tr")
    assert row.find_elements(By.TAG_NAME, "td")[2].text == str(n_players)

    await asyncio.to_thread(link.click)
    assert browser.current_url == f"{base}/replays/{replay_id}"
    assert standard_replay.path.name in browser.title
    rows = browser.find_elements(By.CSS_SELECTOR, "#players tbody tr")
    assert len(rows) == n_players
    stored = {
        r["player_index"]: r["impact"]
        for r in await pg.fetch(
            "SELECT player_index, impact FROM scores WHERE replay_id = $1 AND model_id = $2",
            replay_id,
            model_id,
        )
    }
    shown = {int(r.get_attribute("data-player")): r.find_element(By.CLASS_NAME, "impact").text
             for r in rows}  # fmt: skip
    assert {i: float(v) for i, v in shown.items()} == pytest.approx(stored, abs=0.051)
    goals = browser.find_elements(By.CSS_SELECTOR, "#p-score line.goal")
    assert len(goals) == standard_replay.goals
    chart = Image.open(io.BytesIO(browser.find_element(By.ID, "p-score").screenshot_as_png))
    pixels = np.asarray(chart.convert("RGB"), dtype=np.int32)
    for colour in (BLUE, ORANGE):  # both teams' P(score) run across the match
        hits = np.abs(pixels - np.array(colour)).sum(axis=2) < 40
        assert hits.any(axis=0).sum() > 0.5 * chart.width

    # a page past the last shows the last; an unknown replay is a clear 404 page
    await asyncio.to_thread(browser.get, f"{base}/replays?page=999")
    assert "page" in browser.find_element(By.TAG_NAME, "p").text
    assert browser.find_elements(By.CSS_SELECTOR, "#replays a.report")
    await asyncio.to_thread(browser.get, f"{base}/replays/{'0' * 64}")
    assert "no scores with the active impact model" in browser.page_source


async def test_many_scored_replays_are_paged(stack: Stack, pg: asyncpg.Connection):
    """Past ``PER_PAGE`` replays, the list is paged through newer/older links, and every
    replay is on exactly one page (rows made here, marked failed so no service touches them)."""
    model_id = await _active_impact_model(stack, pg)
    ids = [f"{n:064x}" for n in range(0xFA6E0, 0xFA6E0 + PER_PAGE + 7)]
    async with pg.transaction():
        for replay_id in ids:
            await pg.execute(
                "INSERT INTO replays (id, filename, uri, size_bytes, source, status)"
                " VALUES ($1, $2, 'file:///nowhere', 1, 'test', 'failed')",
                replay_id,
                f"paged-{replay_id[-4:]}.replay",
            )
            await pg.execute(
                "INSERT INTO replay_players (replay_id, player_index, name, team)"
                " VALUES ($1, 0, 'p', 0)",
                replay_id,
            )
            await pg.execute(
                "INSERT INTO scores (replay_id, player_index, model_id, impact, n_frames)"
                " VALUES ($1, 0, $2, 1.0, 1)",
                replay_id,
                model_id,
            )
    base = f"http://127.0.0.1:{stack.settings.live_http_port}/replays"
    try:
        total = await pg.fetchval(
            "SELECT count(DISTINCT replay_id) FROM scores WHERE model_id = $1", model_id
        )
        pages = -(-total // PER_PAGE)
        seen: list[str] = []
        async with aiohttp.ClientSession() as session:
            for number in range(1, pages + 1):
                async with session.get(f"{base}?page={number}") as response:
                    assert response.status == 200
                    body = await response.text()
                listed = re.findall(r'href="/replays/([0-9a-f]{64})"', body)
                assert len(listed) == (PER_PAGE if number < pages else total - len(seen))
                seen.extend(listed)
                assert ('rel="next"' in body) == (number < pages)
                assert ('rel="prev"' in body) == (number > 1)
            async with session.get(f"{base}/{ids[0]}") as response:
                assert response.status == 404  # scored, but no stored features to render
        assert len(seen) == len(set(seen)) == total and set(ids) <= set(seen)
    finally:
        async with pg.transaction():
            await pg.execute("DELETE FROM scores WHERE replay_id = ANY($1::text[])", ids)
            await pg.execute("DELETE FROM replays WHERE id = ANY($1::text[])", ids)


@dataclass(frozen=True)
class OwnPostgres:
    settings: Settings
    env: dict[str, str]

    def run(self, command: str) -> None:
        script = str(REPO_ROOT / "deploy" / "postgres.sh")
        subprocess.run(["bash", script, command], env=self.env, check=command != "stop")


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    """A Postgres of this test's own (``deploy/postgres.sh``), to stop and start again."""
    data_dir = REPO_ROOT / ".rlimpact" / f"test-pg-outage-{PORT_OFFSET}"
    port = 15434 + PORT_OFFSET
    env = {**os.environ, "RLIMPACT_DATA_DIR": str(data_dir), "RLIMPACT_PG_PORT": str(port)}
    postgres = OwnPostgres(Settings(data_dir=data_dir, pg_port=port), env)
    shutil.rmtree(data_dir, ignore_errors=True)
    postgres.run("start")
    try:
        yield postgres
    finally:
        postgres.run("stop")
        shutil.rmtree(data_dir, ignore_errors=True)


async def test_replay_pages_ride_out_a_postgres_outage(own_postgres: OwnPostgres):
    """While Postgres is down the replay pages say so (503), the streams go on, and once it is
    back the pages work again, with no restart."""
    settings = own_postgres.settings
    pool = await db.connect(settings)
    await db.migrate(pool)
    await pool.close()
    runner = web.AppRunner(
        web_app(ScoreHub("live-outage-test"), ReplayCatalog(settings)), shutdown_timeout=0.5
    )
    await runner.setup()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:

            async def replays() -> tuple[int, str]:
                async with session.get(f"{base}/replays") as response:
                    return response.status, await response.text()

            status, body = await replays()
            assert status == 200 and "No impact model is active yet" in body
            own_postgres.run("stop")  # the pool's connection is gone with it
            status, body = await replays()
            assert status == 503 and f"127.0.0.1:{settings.pg_port} cannot be reached" in body
            async with session.get(f"{base}/scores/latest") as response:
                assert response.status == 200 and await response.json() == []
            own_postgres.run("start")

            async def back() -> bool:
                return (await replays())[0] == 200

            await wait_for(back, 30, "the replay pages to work again")
    finally:
        await runner.cleanup()
