"""The live page's P(score) chart and the broadcast overlay in headless Chromium, fed by the
live service's web app with the live scorer's updates of a real replay; the timeline's pure
functions; and the replay pages when Postgres is down."""

from __future__ import annotations

import asyncio
import io
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from PIL import Image

from services.live.replays import PER_PAGE, ReplayCatalog, paginate, requested_page
from services.live.scorer import LiveScorer
from services.live.state import ScoringModel
from services.live.timeline import (
    MAX_POINTS,
    REGULATION_SECONDS,
    MatchTimeline,
    match_seconds,
)
from services.live.web import ScoreHub, StreamEvent, web_app
from services.parser.parse import parse_replay_file
from shared.events import LiveScore, encode
from shared.model import ImpactModel
from shared.settings import Settings
from tests.support.chromium import headless_chromium
from tests.unit.test_bridge_live import plugin_frames

FPS = 10
OVERLAY_SECONDS = 90  # the overlay's timeline window (static/overlay.html)
BLUE, ORANGE = (31, 119, 180), (255, 127, 14)
MATCH = "page-test"


# ---------------------------------------------------------------- pure


def _score(remaining: float | None, blue: int = 0, orange: int = 0, overtime: bool = False):
    return LiveScore(
        match_id="m",
        seq=0,
        frames_received_at=[],
        model_id=None,
        model_version="v",
        feature_schema_version=1,
        seconds_remaining=remaining,
        overtime=overtime,
        blue_goals=blue,
        orange_goals=orange,
        players=[
            {"id": "a", "name": "A", "team": 0, "impact": 0, "offence": 0, "defence": 0,
             "p_score": 0.2, "p_concede": 0.1, "n_frames": 1},
            {"id": "b", "name": "B", "team": 1, "impact": 0, "offence": 0, "defence": 0,
             "p_score": 0.1, "p_concede": 0.2, "n_frames": 1},
        ],
    )  # fmt: skip


def test_match_seconds_follow_the_clock_into_overtime():
    assert match_seconds(_score(280.0), None) == 20.0
    assert match_seconds(_score(30.0, overtime=True), 300.0) == REGULATION_SECONDS + 30.0
    assert match_seconds(_score(None), 42.0) == 42.0


def test_a_timeline_marks_each_goal_once_and_stays_bounded():
    timeline = MatchTimeline("m")
    point, goals = timeline.add(_score(290.0))
    assert (point.p_blue, point.p_orange) == (0.2, 0.1) and goals == []
    _, goals = timeline.add(_score(250.0, blue=1))
    assert [(g.seconds, g.team) for g in goals] == [(50.0, 0)]
    _, goals = timeline.add(_score(250.0, blue=1))  # kickoff: same clock, same score
    assert goals == []
    _, goals = timeline.add(_score(200.0, blue=2, orange=1))
    assert sorted(g.team for g in goals) == [0, 1]
    for i in range(3 * MAX_POINTS):
        timeline.add(_score(200.0 - i * 0.05, blue=2, orange=1))
    assert len(timeline.points) <= MAX_POINTS and len(timeline.goals) == 3
    assert timeline.points[-1].seconds == pytest.approx(100.0 + (3 * MAX_POINTS - 1) * 0.05)


async def test_the_hub_keeps_one_timeline_per_match_and_none_after_it_ended():
    hub = ScoreHub("live-test")
    queue = hub.subscribe()
    ended = _score(200.0, blue=1).model_copy(update={"status": "ended"})
    await _publish(hub, [_score(290.0), _score(250.0, blue=1), ended, ended], pace=0)
    kinds = [queue.get_nowait().kind for _ in range(queue.qsize())]
    assert kinds == ["live", "point"] * 3 + ["live"], "a repeated end draws no second goal"
    assert hub.timelines == {} and hub.latest == {}
    await _publish(hub, [_score(290.0).model_copy(update={"match_id": "next"})], pace=0)
    later = hub.subscribe()
    assert [later.get_nowait().kind for _ in range(later.qsize())] == ["timeline", "live"]


def test_pages_are_clamped_and_counted():
    assert paginate(0, 1).count == 1
    assert paginate(PER_PAGE * 2 + 1, 9).number == 3
    assert paginate(PER_PAGE * 2 + 1, 2).offset == PER_PAGE
    assert paginate(10, -4).number == 1
    assert requested_page("x") == 1 and requested_page("4") == 4


# ---------------------------------------------------------------- the web app


@dataclass(frozen=True)
class Served:
    url: str
    hub: ScoreHub
    updates: list[LiveScore]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def updates(standard_replay) -> list[LiveScore]:
    """The live scorer's updates for the replay until 20 s after its second goal."""
    parsed = parse_replay_file(standard_replay.path, standard_replay.sha256, fps=FPS)
    stop = int(np.searchsorted(parsed.time, parsed.goals[1].time)) + 20 * FPS
    model = ImpactModel(Settings().default_model_dir / "impact.onnx")
    scorer, scoring = LiveScorer(), ScoringModel(model, None, model.version)
    frames = plugin_frames(parsed, MATCH, 0, stop)
    out: list[LiveScore] = []
    for i in range(0, len(frames), 5):
        out.extend(scorer.score(frames[i : i + 5], scoring, now=0.0)[0])
    return out


@pytest.fixture
async def served(updates) -> AsyncIterator[Served]:
    """The web app on a free port; Postgres at a port where nothing listens."""
    settings = Settings(pg_port=_free_port())
    hub = ScoreHub("live-test")
    runner = web.AppRunner(web_app(hub, ReplayCatalog(settings)), shutdown_timeout=0.5)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield Served(f"http://127.0.0.1:{port}", hub, updates)
    finally:
        await runner.cleanup()


async def _publish(hub: ScoreHub, scores: list[LiveScore], pace: float = 0.005) -> None:
    """As feed_hub does, ``pace`` seconds apart (a match's updates come some ms apart; all at
    once, more than a client's queue holds, the oldest would be dropped)."""
    for score in scores:
        raw = encode(score).decode()
        hub.publish(StreamEvent("live", score.match_id, raw, score.status == "ended", score))
        await asyncio.sleep(pace)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with headless_chromium("1280,1000") as driver:
        yield driver


def _hits(image: Image.Image, colour: tuple[int, int, int]) -> np.ndarray:
    pixels = np.asarray(image.convert("RGB"), dtype=np.int32)
    return np.abs(pixels - np.array(colour)).sum(axis=2) < 40


async def _until(check: Callable[[], object], what: str, seconds: float = 20.0) -> object:
    deadline = asyncio.get_running_loop().time() + seconds
    while (result := await asyncio.to_thread(check)) is None or result is False:
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)
    return result


def _goals_so_far(score: LiveScore) -> int:
    return score.blue_goals + score.orange_goals


async def test_the_live_page_draws_each_teams_p_score_with_the_goals(served, browser, tmp_path):
    from selenium.webdriver.common.by import By

    half = len(served.updates) // 2
    # a page opened mid-match gets the history, then every update as it comes
    await _publish(served.hub, served.updates[:half], pace=0)
    await asyncio.to_thread(browser.get, served.url + "/")
    chart = f'section[data-match="{MATCH}"] svg.timeline'

    def polylines() -> int:
        return len(browser.find_elements(By.CSS_SELECTOR, f"{chart} polyline.p-score"))

    await _until(polylines, "the chart of the match in progress")
    await _publish(served.hub, served.updates[half:])
    final = served.updates[-1]

    def goals_drawn() -> bool:
        lines = browser.find_elements(By.CSS_SELECTOR, f"{chart} line.goal")
        return len(lines) == _goals_so_far(final)

    await _until(goals_drawn, f"{_goals_so_far(final)} goal lines")
    assert _goals_so_far(final) >= 2
    for team in (0, 1):
        runs = browser.find_elements(By.CSS_SELECTOR, f"{chart} polyline.team-{team}")
        assert len(runs) == _goals_so_far(final) + 1, "the line breaks at each goal"
    overlay = browser.find_element(By.CSS_SELECTOR, f'section[data-match="{MATCH}"] a.overlay')
    assert overlay.get_attribute("href") == f"{served.url}/overlay?match={MATCH}"
    browser.save_screenshot(tmp_path / "live-page.png")
    shot = Image.open(io.BytesIO(browser.find_element(By.CSS_SELECTOR, chart).screenshot_as_png))
    shot.save(tmp_path / "live-chart.png")
    # the lines span the match so far (of the 5 minutes the axis shows) and follow the data
    played = (REGULATION_SECONDS - final.seconds_remaining) / REGULATION_SECONDS
    for colour in (BLUE, ORANGE):
        hits = _hits(shot, colour)
        assert hits.any(axis=0).sum() > 0.7 * played * shot.width
        rows = np.flatnonzero(hits.any(axis=1))
        assert rows.max() - rows.min() > 0.25 * shot.height


async def test_the_overlay_is_transparent_and_shows_the_match(served, browser, tmp_path):
    from selenium.webdriver.common.by import By

    await asyncio.to_thread(
        browser.execute_cdp_cmd,
        "Emulation.setDefaultBackgroundColorOverride",
        {"color": {"r": 0, "g": 0, "b": 0, "a": 0}},
    )
    try:
        await asyncio.to_thread(browser.get, f"{served.url}/overlay?match={MATCH}")
        await _publish(served.hub, served.updates)
        latest = served.updates[-1]

        def top_players() -> list[str] | None:
            shown = browser.find_elements(By.CSS_SELECTOR, "#top li .impact")
            texts = [e.text for e in shown]
            return texts if len(texts) == 3 else None

        expected = sorted((p.impact for p in latest.players), reverse=True)[:3]
        await _until(lambda: top_players() == [f"{v:.1f}" for v in expected], "the top players")
        page = Image.open(io.BytesIO(browser.get_screenshot_as_png()))
        page.save(tmp_path / "overlay.png")
    finally:
        await asyncio.to_thread(browser.execute_cdp_cmd, "Emulation.clearDeviceMetricsOverride", {})
        await asyncio.to_thread(
            browser.execute_cdp_cmd, "Emulation.setDefaultBackgroundColorOverride", {}
        )
    assert page.mode == "RGBA"
    alpha = np.asarray(page)[:, :, 3]
    assert (alpha == 0).mean() > 0.8, "the game shows through all but the panel"
    panel = page.crop(page.convert("RGBA").getbbox())
    assert panel.width < 0.5 * page.width and panel.height < 0.6 * page.height
    # the P(score) bars and the timeline in both teams' colours, on the panel
    assert _hits(panel, BLUE).sum() > 500 and _hits(panel, ORANGE).sum() > 500
    timeline = browser.find_element(By.CSS_SELECTOR, "svg.timeline")
    assert len(timeline.find_elements(By.CSS_SELECTOR, "polyline.p-score")) >= 2
    spark = Image.open(io.BytesIO(timeline.screenshot_as_png))
    played = (REGULATION_SECONDS - latest.seconds_remaining) / OVERLAY_SECONDS
    for colour in (BLUE, ORANGE):  # every update since the start, in the last 90 s shown
        assert _hits(spark, colour).any(axis=0).sum() > 0.7 * min(played, 1.0) * spark.width
    bars = [browser.find_element(By.ID, f"bar-{team}").text for team in (0, 1)]
    probabilities = {p.team: p.p_score for p in latest.players}
    assert bars == [f"{round(100 * probabilities[team])}%" for team in (0, 1)]


async def test_replay_pages_say_postgres_is_down_and_the_streams_go_on(served):
    async with aiohttp.ClientSession() as session:
        for path in ("/replays", "/replays?page=3", "/replays/" + "a" * 64):
            async with session.get(served.url + path) as response:
                body = await response.text()
                assert response.status == 503, body
                assert "cannot be reached" in body and "Retry-After" in response.headers
        async with session.get(served.url + "/replays/not-an-id") as response:
            assert response.status == 404
        await _publish(served.hub, served.updates[:3])
        async with session.get(served.url + "/scores/latest") as response:
            assert response.status == 200
            assert [s["match_id"] for s in await response.json()] == [MATCH]
