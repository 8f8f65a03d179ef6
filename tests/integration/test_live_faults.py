"""The live service's fault tolerance on the real stack: killed mid-match (kill -9) it goes on
from the state in ``live.state``; a second instance joining mid-match takes half the
partitions; either way every match ends with the totals of an undisturbed scorer."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import aiohttp
import asyncpg
import numpy as np
import pytest
from aiokafka.partitioner import DefaultPartitioner

from services.cli.instances import Instance, instance_environment
from services.live.model import LiveModel
from services.live.scorer import LiveScorer
from services.live.state import ScoringModel
from shared.events import LIVE_FRAMES, LiveFrame, LiveScore, utcnow
from shared.frames import ParsedReplay
from shared.settings import REPO_ROOT
from tests.integration.conftest import Stack, wait_for
from tests.integration.live_support import (
    FPS,
    LiveTopics,
    final_score,
    new_match,
    plugin_frame,
    simulator,
)
from tests.support.prometheus import matching, scrape, total

pytestmark = pytest.mark.integration

RESUME_SECONDS = 60.0  # the bound the tests allow (a loaded machine); they print how long


def _live_env(stack: Stack, instance: int) -> dict[str, str]:
    """Instance 0 is the stack's own; another has its own metrics and HTTP ports, as the
    supervisor gives them (``RLIMPACT_INSTANCE``)."""
    if instance == 0:
        return stack.env
    return {**stack.env, **instance_environment(stack.settings, Instance("live", instance))}


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
        match_id = await new_match(live, before)

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
        final = await final_score(live, match_id)
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
                    await ws.send_str(json.dumps(plugin_frame(parsed, match_id, i, touches)))
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
        finals = {m: await final_score(live, m) for m in matches}
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
