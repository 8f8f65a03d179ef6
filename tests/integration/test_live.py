"""Live matches end to end, on the real stack: the SOS simulator (``rlimpact simulate``) plays a
replay as the game -> the bridge service -> ``live.frames`` -> the live service ->
``scores.live`` -> the live page in headless Chromium; the token-protected custom-plugin
endpoint; reconnecting to a feed that went away; an old plugin build without locations."""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import aiohttp
import asyncpg
import numpy as np
import pytest
from aiokafka.partitioner import DefaultPartitioner
from PIL import Image, ImageChops

from services.bridge.simulator import PlaybackOptions, sos_messages
from services.live.model import LiveModel
from services.live.scorer import LiveScorer
from services.live.state import ScoringModel
from services.parser.parse import parse_replay_file
from shared.events import (
    EVENTS_INVALID,
    LIVE_FRAMES,
    SCORES_LIVE,
    InvalidEvent,
    LiveFrame,
    LiveScore,
    utcnow,
)
from shared.features.table import FEATURE_SCHEMA_VERSION
from shared.frames import PLAYER_FIELD, ParsedReplay
from shared.kafka import ensure_topics
from shared.settings import REPO_ROOT
from tests.integration.conftest import Stack, events_on, wait_for
from tests.support.chromium import headless_chromium
from tests.support.prometheus import matching, scrape, total

pytestmark = pytest.mark.integration

FPS = 30
MATCH_TIMEOUT = 240.0


@dataclass
class LiveTopics:
    """Everything on live.frames, scores.live and events.invalid during the tests."""

    frames: list[LiveFrame]
    scores: list[LiveScore]
    invalid: list[InvalidEvent]

    def frames_of(self, match_id: str) -> list[LiveFrame]:
        return [f for f in self.frames if f.match_id == match_id]

    def scores_of(self, match_id: str) -> list[LiveScore]:
        return [s for s in self.scores if s.match_id == match_id]

    def match_ids(self) -> set[str]:
        return {f.match_id for f in self.frames}


@pytest.fixture(scope="module")
async def live(stack: Stack) -> AsyncIterator[LiveTopics]:
    await ensure_topics(stack.settings)
    async with (
        events_on(stack, LIVE_FRAMES, LiveFrame) as frames,
        events_on(stack, SCORES_LIVE, LiveScore) as scores,
        events_on(stack, EVENTS_INVALID, InvalidEvent) as invalid,
    ):
        await _live_service_ready(stack)
        yield LiveTopics(frames, scores, invalid)


async def _live_service_ready(stack: Stack) -> None:
    """The live service consumes every partition of live.frames (it starts at their end)."""

    async def ready() -> bool:
        try:
            samples = scrape(stack.settings.metrics_port("live"))
        except OSError:
            return False
        lag = matching(samples, "rlimpact_consumer_lag", service="live", topic=LIVE_FRAMES.name)
        return len(lag) == stack.settings.partitions(LIVE_FRAMES)

    await wait_for(ready, 120, "the live service to be assigned live.frames")
    port = stack.settings.metrics_port("live")
    model = matching(scrape(port), "rlimpact_active_model_id", service="live")
    assert model, f"the live service has no usable model:\n{stack.log('live')[-2000:]}"


@pytest.fixture(scope="module")
def parsed(standard_replay) -> ParsedReplay:
    return parse_replay_file(standard_replay.path, standard_replay.sha256, fps=FPS)


def _sos_port(stack: Stack) -> int:
    port = urlparse(stack.env["RLIMPACT_BRIDGE_SOS_URLS"]).port
    assert port is not None
    return port


@contextmanager
def simulator(stack: Stack, replay: Path, *options: str) -> Iterator[subprocess.Popen[str]]:
    """``rlimpact simulate`` on the port the bridge follows, stopped on exit."""
    port = _sos_port(stack)
    command = [sys.executable, "-m", "services.cli", "simulate", str(replay), "--port", str(port)]
    process = subprocess.Popen(
        [*command, *options],
        env=stack.env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


async def _new_match(live: LiveTopics, before: set[str], source: str = "sos") -> str:
    async def appeared() -> str | None:
        new = [f.match_id for f in live.frames if f.source == source and f.match_id not in before]
        return new[0] if new else None

    return await wait_for(appeared, 90, f"a new match on live.frames from {source}")


async def _final_score(live: LiveTopics, match_id: str) -> LiveScore:
    async def final() -> LiveScore | None:
        ended = [s for s in live.scores_of(match_id) if s.status == "ended"]
        return ended[-1] if ended else None

    return await wait_for(final, MATCH_TIMEOUT, f"the final scores.live of {match_id}")


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
        match_id = await _new_match(live, before)
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
        final = await _final_score(live, match_id)

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
                await ws.send_str(json.dumps(_plugin_frame(parsed, match_id, i)))
            await ws.send_str(json.dumps({"type": "frame", "match_id": match_id}))
            reply = await ws.receive_json(timeout=30)
            assert "ball" in reply["error"] and "players" in reply["error"]
            await ws.send_str(json.dumps({"type": "match_ended", "match_id": match_id}))
        final = await _final_score(live, match_id)

    frames = live.frames_of(match_id)
    assert len(frames) == stop - start + 1 and {f.source for f in frames} == {"plugin"}
    rejected = [e for e in live.invalid if e.topic == "bridge:plugin" and match_id in e.raw]
    assert len(rejected) == 1 and "ball" in rejected[0].reason
    assert {p.n_frames for p in final.players} == {stop - start}

    assert final.players and all(math.isfinite(p.impact) for p in final.players)
    assert {p.name for p in final.players} == {p.name for p in parsed.players}


def _plugin_frame(
    parsed: ParsedReplay, match_id: str, i: int, touches: np.ndarray | None = None
) -> dict[str, object]:
    """Frame ``i`` as a custom plugin sends it; ``touches`` [T, P]: each player's touch
    counter (none sent without)."""
    f = PLAYER_FIELD
    fields = ("x", "y", "z", "roll", "pitch", "yaw", "vx", "vy", "vz", "boost")
    t = float(parsed.time[i])
    return {
        "type": "frame",
        "match_id": match_id,
        "time": t,
        "seconds_remaining": float(parsed.seconds_remaining[i]),
        "blue_goals": sum(g.team == 0 and g.time <= t for g in parsed.goals),
        "orange_goals": sum(g.team == 1 and g.time <= t for g in parsed.goals),
        "ball": dict(
            zip(("x", "y", "z", "vx", "vy", "vz"), map(float, parsed.ball[i]), strict=True)
        ),
        "players": [
            {
                "id": f"player-{p.index}",
                "name": p.name,
                "team": p.team,
                **{k: float(parsed.cars[i, p.index, f[k]]) for k in fields},
                "jumping": bool(parsed.cars[i, p.index, f["jumping"]]),
                "demolished": bool(parsed.cars[i, p.index, f["demolished"]]),
                **({"touches": int(touches[i, p.index])} if touches is not None else {}),
            }
            for p in parsed.players
        ],
    }


async def test_the_bridge_reconnects_and_tolerates_old_plugin_builds(
    stack: Stack, live: LiveTopics, standard_replay
):
    bridge, live_port = stack.settings.metrics_port("bridge"), stack.settings.metrics_port("live")
    reconnects = total(scrape(bridge), "rlimpact_bridge_reconnects_total")
    blind = total(scrape(live_port), "rlimpact_live_frames_skipped_total", reason="no_locations")

    before = live.match_ids()
    with simulator(stack, standard_replay.path, "--legacy", "--max-seconds", "60"):
        legacy = await _new_match(live, before)

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
        current = await _new_match(live, before)
        await _final_score(live, current)

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

RESUME_SECONDS = 60.0  # the bound the tests allow (a loaded machine); they print how long


def _live_env(stack: Stack, instance: int) -> dict[str, str]:
    """Instance 0 is the stack's own; another has its own metrics and HTTP ports, as the
    supervisor gives them (``RLIMPACT_INSTANCE``)."""
    if instance == 0:
        return stack.env
    http = stack.settings.live_http_port + instance
    return {**stack.env, "RLIMPACT_INSTANCE": str(instance), "RLIMPACT_LIVE_HTTP_PORT": str(http)}


def _start_live(stack: Stack, instance: int) -> subprocess.Popen[bytes]:
    name = "live" if instance == 0 else f"live-{instance}"
    process = subprocess.Popen(
        [sys.executable, "-m", "services.live"],
        env=_live_env(stack, instance),
        cwd=REPO_ROOT,
        stdout=(stack.data_dir / "logs" / f"{name}.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    stack.processes[name] = process  # stopped with the stack
    return process


def _kill(process: subprocess.Popen[bytes]) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


async def _model_in_use(stack: Stack, final: LiveScore) -> ScoringModel:
    """The model the live service scored with, loaded as it loads it."""
    pool = await asyncpg.create_pool(stack.settings.pg_dsn, min_size=1, max_size=1)
    try:
        model = LiveModel("test", stack.settings, pool)
        await model.refresh()
    finally:
        await pool.close()
    assert model.current is not None and model.current.model_id == final.model_id
    return model.current


def _undisturbed(frames: list[LiveFrame], model: ScoringModel) -> LiveScore:
    """The match's final update from one scorer that saw all its frames, never stopped."""
    scorer = LiveScorer()
    updates: list[LiveScore] = []
    for i in range(0, len(frames), 4):
        updates += scorer.score(frames[i : i + 4], model, now=0.0)[0]
    assert updates and updates[-1].status == "ended"
    return updates[-1]


def _assert_same_totals(got: LiveScore, want: LiveScore) -> None:
    expected = {p.id: p for p in want.players}
    assert {p.id for p in got.players} == set(expected)
    assert sum(abs(p.impact) for p in want.players) > 1.0, "touches were credited"
    for player in got.players:
        reference = expected[player.id]
        assert player.n_frames == reference.n_frames, player.name
        assert abs(player.impact - reference.impact) <= 0.5, (player.name, player, reference)


async def _latest_shows(port: int, match_id: str, min_frames: int) -> bool:
    """The live page's JSON shows the match with at least ``min_frames`` scored."""
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/scores/latest") as response,
        ):
            shown = [LiveScore.model_validate(s) for s in await response.json()]
    except (aiohttp.ClientError, OSError):
        return False
    return any(s.match_id == match_id and s.players[0].n_frames >= min_frames for s in shown)


async def test_a_live_service_killed_mid_match_goes_on_from_the_same_totals(
    stack: Stack, live: LiveTopics, standard_replay
):
    """kill -9 of the live service while a simulated match plays: the restarted service goes
    on from the state in live.state, and every player's final totals are those of one scorer
    that saw the whole match undisturbed (no frame counted twice or lost)."""
    before = live.match_ids()
    with simulator(stack, standard_replay.path, "--speed", "3", "--max-seconds", "100"):
        match_id = await _new_match(live, before)

        async def well_under_way() -> LiveScore | None:  # credited touches, and snapshots
            scores = live.scores_of(match_id)
            latest = scores[-1] if scores else None
            credited = latest and any(p.impact != 0 for p in latest.players)
            return latest if credited and latest.players[0].n_frames >= 25 * FPS else None

        standing = await wait_for(well_under_way, 90, "the match to be well under way")
        _kill(stack.processes["live"])
        killed_at, killed_wall = asyncio.get_running_loop().time(), utcnow()
        _start_live(stack, 0)
        shown = standing.players[0].n_frames
        await wait_for(
            lambda: _latest_shows(stack.settings.live_http_port, match_id, shown),
            RESUME_SECONDS,
            "the live page to show the match again",
        )
        page_back = asyncio.get_running_loop().time() - killed_at

        async def scored_again() -> bool:
            return any(s.players[0].n_frames > shown + FPS for s in live.scores_of(match_id))

        await wait_for(scored_again, RESUME_SECONDS, "scores.live to go on")
        resumed = asyncio.get_running_loop().time() - killed_at
        final = await _final_score(live, match_id)
    print(f"after kill -9: page back in {page_back:.1f} s, scoring again in {resumed:.1f} s")

    frames = live.frames_of(match_id)
    _assert_same_totals(final, _undisturbed(frames, await _model_in_use(stack, final)))
    assert {p.n_frames for p in final.players} == {len(frames) - 1}  # all but match_ended
    # The frames since the last snapshot were scored before the kill and again after it (from
    # the committed offset), and still count once in the totals.
    again = [u for u in live.scores_of(match_id) if u.emitted_at > killed_wall]
    assert any(t < killed_wall for u in again for t in u.frames_received_at)


def _keys_on_every_partition(prefix: str) -> list[str]:
    """Match ids whose live.frames partitions are all different: one per partition."""
    partitioner = DefaultPartitioner()
    every = list(range(LIVE_FRAMES.partitions))
    by_partition: dict[int, str] = {}
    for n in range(10_000):
        key = f"{prefix}-{n}"
        by_partition.setdefault(partitioner(key.encode(), every, every), key)
        if len(by_partition) == len(every):
            return list(by_partition.values())
    raise AssertionError("no key for some partition")


async def test_a_second_live_instance_joining_mid_match_changes_no_totals(
    stack: Stack, live: LiveTopics, parsed: ParsedReplay
):
    """One match per partition, sent by a custom plugin; a second live instance joins while
    they play, so that half the partitions move to it: every match ends with the totals of an
    undisturbed scorer."""
    matches = _keys_on_every_partition(f"rebalance-{os.getpid()}")
    touches = np.zeros((parsed.n_frames, len(parsed.players)), dtype=np.int64)
    events = np.asarray(parsed.touches).reshape(-1, 2)
    np.add.at(touches, (events[:, 0], events[:, 1]), 1)
    touches = np.cumsum(touches, axis=0)
    joined = asyncio.Event()
    start, longest = 300, 60 * FPS
    url = f"ws://127.0.0.1:{stack.settings.bridge_plugin_port}/plugin"
    token = stack.env["RLIMPACT_BRIDGE_PLUGIN_TOKEN"]

    async def play() -> int:
        """At twice real time until 10 s of game after the second instance joined."""
        sent, until = 0, start + longest
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=headers) as ws:
            for i in range(start, start + longest):
                if joined.is_set() and until > i + 10 * FPS:
                    until = i + 10 * FPS
                if i >= until:
                    break
                for match_id in matches:
                    await ws.send_str(json.dumps(_plugin_frame(parsed, match_id, i, touches)))
                sent += 1
                await asyncio.sleep(0.5 / FPS)
            assert joined.is_set(), "the match ended before the second instance joined"
            for match_id in matches:
                await ws.send_json({"type": "match_ended", "match_id": match_id})
        return sent

    player = asyncio.create_task(play())
    port = stack.settings.metrics_port("live", instance=1)
    try:
        await asyncio.sleep(3)
        _start_live(stack, 1)

        async def assigned() -> bool:
            try:
                lag = matching(scrape(port), "rlimpact_consumer_lag", topic=LIVE_FRAMES.name)
            except OSError:
                return False
            return bool(lag)

        await wait_for(assigned, 90, "the second live instance to take partitions")
        joined.set()
        sent = await player
        finals = {m: await _final_score(live, m) for m in matches}
        moved = total(scrape(port), "rlimpact_events_in_total", topic=LIVE_FRAMES.name)
    finally:
        player.cancel()
        if (process := stack.processes.pop("live-1", None)) is not None:
            process.terminate()
            process.wait(timeout=30)

    assert moved > 0, "no match moved to the second instance"
    model = await _model_in_use(stack, finals[matches[0]])
    for match_id, final in finals.items():
        frames = live.frames_of(match_id)
        assert len(frames) == sent + 1
        _assert_same_totals(final, _undisturbed(frames, model))
        assert {p.n_frames for p in final.players} == {sent}
