"""Live matches end to end, on the real stack: the SOS simulator (``rlimpact simulate``) plays a
replay as the game -> the bridge service -> ``live.frames`` -> the live service ->
``scores.live`` -> the live page in headless Chromium; the token-protected custom-plugin
endpoint; reconnecting to a feed that went away; an old plugin build without locations.
Kills and rebalances of the live service: ``test_live_faults.py``."""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import numpy as np
import pytest
from PIL import Image, ImageChops

from services.bridge.simulator import PlaybackOptions, sos_messages
from shared.features.table import FEATURE_SCHEMA_VERSION
from shared.frames import ParsedReplay
from tests.integration.conftest import Stack, wait_for
from tests.integration.live_support import (
    LiveTopics,
    final_score,
    new_match,
    plugin_frame,
    simulator,
)
from tests.support.chromium import headless_chromium
from tests.support.prometheus import matching, scrape, total

pytestmark = pytest.mark.integration

# ---------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with headless_chromium() as driver:
        yield driver


@dataclass(frozen=True)
class PageShot:
    impacts: dict[str, str]  # player id -> the impact as the page shows it
    cells: dict[str, Image.Image]  # player id -> screenshot of that impact cell
    table: Image.Image


def _page_shot(driver, match_id: str) -> PageShot:
    from selenium.webdriver.common.by import By

    section = driver.find_element(By.CSS_SELECTOR, f'section[data-match="{match_id}"]')
    impacts, cells = {}, {}
    for row in section.find_elements(By.CSS_SELECTOR, "tbody tr"):
        player, cell = row.get_attribute("data-player"), row.find_element(By.CLASS_NAME, "impact")
        impacts[player] = cell.text
        cells[player] = Image.open(io.BytesIO(cell.screenshot_as_png)).convert("RGB")
    table = section.find_element(By.TAG_NAME, "tbody").screenshot_as_png
    return PageShot(impacts, cells, Image.open(io.BytesIO(table)).convert("RGB"))


def _chart_shot(driver, match_id: str) -> tuple[int, Image.Image]:
    """The goal lines on the match's P(score) chart, and a screenshot of it."""
    from selenium.webdriver.common.by import By

    chart = driver.find_element(By.CSS_SELECTOR, f'section[data-match="{match_id}"] svg.timeline')
    goals = len(chart.find_elements(By.CSS_SELECTOR, "line.goal"))
    return goals, Image.open(io.BytesIO(chart.screenshot_as_png)).convert("RGB")


def _columns_with(image: Image.Image, colour: tuple[int, int, int]) -> int:
    hits = np.abs(np.asarray(image, dtype=np.int32) - np.array(colour)).sum(axis=2) < 40
    return int(hits.any(axis=0).sum())


def _rows_shown(driver, match_id: str) -> int:
    from selenium.webdriver.common.by import By

    selector = f'section[data-match="{match_id}"] tbody tr'
    return len(driver.find_elements(By.CSS_SELECTOR, selector))


def _differs(a: Image.Image, b: Image.Image) -> bool:
    width, height = min(a.width, b.width), min(a.height, b.height)
    box = (0, 0, width, height)
    return ImageChops.difference(a.crop(box), b.crop(box)).getbbox() is not None


# ---------------------------------------------------------------- tests


async def test_a_simulated_match_is_scored_live_and_shown_on_the_page(
    stack: Stack, live: LiveTopics, parsed: ParsedReplay, standard_replay, browser
):
    first_goal = min(g.time for g in parsed.goals) - float(parsed.time[0])
    seconds = round(first_goal + 15.0, 1)  # a goal, its replay, and play after it
    expected = [
        m["data"]["game"]["isReplay"]
        for _, m in sos_messages(parsed, "-", PlaybackOptions(max_seconds=seconds))
        if m["event"] == "game:update_state"
    ]
    n_live, n_replay = expected.count(False), expected.count(True)
    assert n_replay > 0
    bridge_port = stack.settings.metrics_port("bridge")
    skipped_before = total(scrape(bridge_port), "rlimpact_live_frames_skipped_total")

    before = live.match_ids()
    with simulator(stack, standard_replay.path, "--speed", "3", "--max-seconds", str(seconds)):
        match_id = await new_match(live, before)
        page = f"http://127.0.0.1:{stack.settings.live_http_port}/"
        await asyncio.to_thread(browser.get, page)

        async def rows_shown() -> bool:
            return await asyncio.to_thread(_rows_shown, browser, match_id) == len(parsed.players)

        await wait_for(rows_shown, 60, "the live page to show the match's players")

        async def credited() -> bool:  # a touch's outcome is known some seconds into play
            shot = await asyncio.to_thread(_page_shot, browser, match_id)
            return any(shown != "0.00" for shown in shot.impacts.values())

        await wait_for(credited, 60, "the live page to show a credited touch")
        first = await asyncio.to_thread(_page_shot, browser, match_id)
        await asyncio.sleep(4)
        second = await asyncio.to_thread(_page_shot, browser, match_id)
        final = await final_score(live, match_id)

        async def goals_marked() -> bool:
            goals, _ = await asyncio.to_thread(_chart_shot, browser, match_id)
            return goals >= final.blue_goals + final.orange_goals

        await wait_for(goals_marked, 30, "the chart to mark the match's goals")
        goals_drawn, chart = await asyncio.to_thread(_chart_shot, browser, match_id)

    # The page: numbers from scores.live that change while the match plays, on screen too.
    assert set(first.impacts) == {p.id for p in final.players}
    changed = [p for p in first.impacts if first.impacts[p] != second.impacts[p]]
    assert changed, f"no impact changed on the page in 4 s: {second.impacts}"
    assert any(_differs(first.cells[p], second.cells[p]) for p in changed)
    assert _differs(first.table, second.table)
    updates = live.scores_of(match_id)
    for player, shown in second.impacts.items():
        assert shown in {f"{p.impact:.2f}" for u in updates for p in u.players if p.id == player}

    # The chart: each team's P(score) over the match so far (of the 5 minutes it spans).
    assert goals_drawn == final.blue_goals + final.orange_goals
    assert final.seconds_remaining is not None
    played = (300.0 - final.seconds_remaining) / 300.0
    for colour in ((31, 119, 180), (255, 127, 14)):
        assert _columns_with(chart, colour) > 0.6 * played * chart.width

    # The bridge: every update of the game once, in order, none from a goal replay.
    frames = [f for f in live.frames_of(match_id) if f.status == "playing"]
    assert len(frames) == n_live
    assert [f.seq for f in frames] == list(range(n_live))
    times = [f.game_time for f in frames]
    assert times == sorted(times), "a goal replay's frames were forwarded"
    skipped = total(scrape(bridge_port), "rlimpact_live_frames_skipped_total") - skipped_before
    assert skipped == n_replay

    # The live service: every frame scored once, with the replay model family, marked live.
    assert sum(len(u.frames_received_at) for u in updates) == n_live
    assert all(u.live and u.feature_schema_version == FEATURE_SCHEMA_VERSION for u in updates)
    assert all(t <= u.emitted_at for u in updates for t in u.frames_received_at)
    assert final.status == "ended" and (final.blue_goals, final.orange_goals) != (0, 0)
    assert {p.n_frames for p in final.players} == {n_live}


async def test_custom_plugin_frames_are_scored_like_the_replay(
    stack: Stack, live: LiveTopics, parsed: ParsedReplay
):
    start, stop = 1500, 1590
    match_id = f"plugin-{os.getpid()}"
    url = f"ws://127.0.0.1:{stack.settings.bridge_plugin_port}/plugin"
    token = stack.env["RLIMPACT_BRIDGE_PLUGIN_TOKEN"]
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                async with http.ws_connect(url, headers=headers):
                    pass
            assert refused.value.status == 401
        async with http.ws_connect(url, headers={"Authorization": f"Bearer {token}"}) as ws:
            for i in range(start, stop):
                await ws.send_str(json.dumps(plugin_frame(parsed, match_id, i)))
            await ws.send_str(json.dumps({"type": "frame", "match_id": match_id}))
            reply = await ws.receive_json(timeout=30)
            assert "ball" in reply["error"] and "players" in reply["error"]
            await ws.send_str(json.dumps({"type": "match_ended", "match_id": match_id}))
        final = await final_score(live, match_id)

    frames = live.frames_of(match_id)
    assert len(frames) == stop - start + 1 and {f.source for f in frames} == {"plugin"}
    rejected = [e for e in live.invalid if e.topic == "bridge:plugin" and match_id in e.raw]
    assert len(rejected) == 1 and "ball" in rejected[0].reason
    assert {p.n_frames for p in final.players} == {stop - start}

    assert final.players and all(math.isfinite(p.impact) for p in final.players)
    assert {p.name for p in final.players} == {p.name for p in parsed.players}


async def test_the_bridge_reconnects_and_tolerates_old_plugin_builds(
    stack: Stack, live: LiveTopics, standard_replay
):
    bridge, live_port = stack.settings.metrics_port("bridge"), stack.settings.metrics_port("live")
    reconnects = total(scrape(bridge), "rlimpact_bridge_reconnects_total")
    blind = total(scrape(live_port), "rlimpact_live_frames_skipped_total", reason="no_locations")

    before = live.match_ids()
    with simulator(stack, standard_replay.path, "--legacy", "--max-seconds", "60"):
        legacy = await new_match(live, before)

        async def some_frames() -> bool:
            return len(live.frames_of(legacy)) >= 30

        await wait_for(some_frames, 60, "frames from the old plugin build")
    # The feed is gone: the bridge keeps trying until it comes back.
    await wait_for(
        lambda: _gauge_is(bridge, "rlimpact_bridge_feed_connected", 0.0), 30, "the disconnect"
    )
    await asyncio.sleep(2)
    before = live.match_ids()
    with simulator(stack, standard_replay.path, "--max-seconds", "8", "--speed", "2"):
        current = await new_match(live, before)
        await final_score(live, current)

    assert total(scrape(bridge), "rlimpact_bridge_reconnects_total") > reconnects
    frames = live.frames_of(legacy)
    assert all(f.ball is None and not any(p.has_location for p in f.players) for f in frames)
    assert all(len(f.players) == len(frames[0].players) > 0 for f in frames)
    assert not live.scores_of(legacy), "nothing to score without locations"
    skipped = total(scrape(live_port), "rlimpact_live_frames_skipped_total", reason="no_locations")
    assert skipped - blind >= len(frames)
    for name in ("bridge", "live"):
        assert stack.processes[name].poll() is None, f"{name} died:\n{stack.log(name)[-3000:]}"


async def _gauge_is(port: int, name: str, value: float) -> bool:
    samples = matching(scrape(port), name)
    return bool(samples) and all(s.value == value for s in samples)


# ---------------------------------------------------------------- fault tolerance
