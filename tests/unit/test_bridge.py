"""The bridge's feeds: SOS messages and custom-plugin frames -> live.frames, on real replays
played back by the simulator."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from datetime import timedelta
from itertools import pairwise

import aiohttp
import numpy as np
import pytest

from services.bridge.plugin import (
    PluginMessageError,
    PluginSession,
    presented_token,
    token_ok,
)
from services.bridge.simulator import (
    PlaybackOptions,
    SosSimulator,
    build_matches,
    sos_messages,
)
from services.bridge.sos import Skipped, SosMessageError, SosSession
from services.parser.parse import parse_replay_file
from shared.backoff import Backoff
from shared.events import LiveFrame, decode, encode, utcnow
from shared.frames import PLAYER_FIELD, ParsedReplay
from shared.settings import REPO_ROOT

GAME_SECONDS = 150.0


@pytest.fixture(scope="module")
def parsed(standard_replay) -> ParsedReplay:
    return parse_replay_file(standard_replay.path, standard_replay.sha256, fps=30)


def _play(parsed: ParsedReplay, options: PlaybackOptions, guid: str = "match-1"):
    session, start = SosSession(), utcnow()
    frames, skipped, messages = [], [], list(sos_messages(parsed, guid, options))
    for at, message in messages:
        result = session.handle(json.dumps(message), start + timedelta(seconds=at))
        if isinstance(result, Skipped):
            skipped.append(result.reason)
        elif result is not None:
            frames.append(result)
    return messages, frames, skipped


def test_simulated_match_maps_to_frames_in_replay_units(parsed):
    options = PlaybackOptions(max_seconds=GAME_SECONDS)
    messages, frames, skipped = _play(parsed, options)
    updates = [m for _, m in messages if m["event"] == "game:update_state"]
    live = [m for m in updates if not m["data"]["game"]["isReplay"]]
    assert len(frames) == len(live) + 1  # every live update, then the end of the match
    assert len(skipped) == len(updates) - len(live) > 0, "goal replays were played and dropped"
    assert {f.match_id for f in frames} == {"match-1"}
    assert [f.seq for f in frames] == list(range(len(frames)))
    assert frames[-1].status == "ended" and frames[-2].status == "playing"

    # The 100th frame is the replay's 100th frame, in the replay's own units.
    frame, f = frames[100], PLAYER_FIELD
    assert frame.game_time == pytest.approx(parsed.time[100] - parsed.time[0], abs=1e-3)
    assert frame.ball is not None
    assert frame.ball.x == pytest.approx(parsed.ball[100, 0], abs=0.01)
    by_name = {p.name: p for p in frame.players}
    for info in parsed.players:
        car, player = parsed.cars[100, info.index], by_name[info.name]
        assert (player.x, player.y, player.z) == pytest.approx(tuple(car[0:3]), abs=0.01)
        assert player.yaw == pytest.approx(car[f["yaw"]], abs=1e-3)
        assert player.boost == pytest.approx(car[f["boost"]], abs=0.006)
        assert player.speed == pytest.approx(np.linalg.norm(car[6:9]), rel=1e-3, abs=0.5)
        assert player.team == info.team and player.demolished == bool(car[f["demolished"]])
    assert decode(LiveFrame, encode(frame)) == frame


def test_goal_replays_are_not_forwarded(parsed):
    _, frames, skipped = _play(parsed, PlaybackOptions(max_seconds=GAME_SECONDS))
    goals = [g for g in parsed.goals if g.time - parsed.time[0] <= GAME_SECONDS]
    assert goals, "the replay has goals in the part played"
    assert set(skipped) == {"goal_replay"}
    times = [f.game_time for f in frames if f.status == "playing"]
    assert all(b >= a for a, b in pairwise(times)), "a replay rewound time"
    scores = [(f.blue_goals, f.orange_goals) for f in frames]
    assert sum(scores[-1]) == len(goals)


def test_older_plugin_builds_without_locations_are_tolerated(parsed):
    _, frames, _ = _play(parsed, PlaybackOptions(max_seconds=20, legacy=True), guid="unused")
    assert frames and frames[0].match_id.startswith("sos-"), "no GUID: the bridge names it"
    assert len({f.match_id for f in frames}) == 1
    frame = frames[50]
    assert frame.ball is None and frame.seconds_remaining is not None
    assert len(frame.players) == len(parsed.players)
    assert all(not p.has_location and p.speed is not None for p in frame.players)


def test_odd_but_valid_messages():
    session, now = SosSession(), utcnow()
    update = {
        "event": "game:update_state",
        "data": {
            "hasGame": True,
            "game": {"teams": {"0": {"score": "2"}, "1": {"score": 1}}, "time": "120"},
            "players": {
                "A_1": {"name": "A", "team": 0, "boost": "55", "location": {"X": 1}},
                "Spec_9": {"name": "Spec", "team": 255},
                "B_2": "not an object",
            },
        },
    }
    frame = session.handle(json.dumps(update), now)
    assert isinstance(frame, LiveFrame)
    assert (frame.blue_goals, frame.orange_goals, frame.seconds_remaining) == (2, 1, 120.0)
    assert [p.id for p in frame.players] == ["A_1"]
    assert frame.players[0].boost == 0.55 and not frame.players[0].has_location
    assert session.handle('{"event": "game:statfeed_event", "data": {}}', now) is None
    no_game = {"event": "game:update_state", "data": {"hasGame": False, "game": {}}}
    assert session.handle(json.dumps(no_game), now) == Skipped("no_game")


def test_matches_begin_and_end():
    session, now = SosSession(), utcnow()

    def send(event: str, **data) -> LiveFrame | Skipped | None:
        return session.handle(json.dumps({"event": event, "data": data}), now)

    state = {"game": {"teams": []}, "players": {}}
    send("game:match_created")
    first = session.match_id
    send("game:initialized")  # the same match
    assert session.match_id == first
    assert isinstance(send("game:update_state", **state), LiveFrame)
    ended = send("game:match_ended", winner_team_num=0)
    assert isinstance(ended, LiveFrame) and ended.status == "ended" and ended.match_id == first
    assert send("game:update_state", **state) == Skipped("match_ended")  # the podium
    frame = send("game:update_state", match_guid="G2", **state)  # a new GUID: a new match
    assert isinstance(frame, LiveFrame) and frame.match_id == "G2" and frame.seq == 0
    send("game:match_created")
    assert session.match_id not in (first, "G2")


@pytest.mark.parametrize("raw", ["not json", "[1, 2]", '{"data": {}}', b"\xff\xfe"])
def test_unreadable_sos_messages_are_errors(raw):
    with pytest.raises(SosMessageError, match="not"):
        SosSession().handle(raw, utcnow())


PLUGIN_FRAME = {
    "type": "frame",
    "match_id": "p-1",
    "time": 1.5,
    "seconds_remaining": 298.5,
    "ball": {"x": 0, "y": 0, "z": 93},
    "players": [{"id": "a", "name": "A", "team": 0, "x": 0, "y": -4000, "z": 17, "boost": 0.3}],
}


def test_plugin_frames():
    session, now = PluginSession(), utcnow()
    frame = session.handle(json.dumps(PLUGIN_FRAME), now)
    assert isinstance(frame, LiveFrame) and frame.source == "plugin" and frame.seq == 0
    assert frame.players[0].vx is None and frame.game_time == 1.5
    assert session.handle(json.dumps({**PLUGIN_FRAME, "replay": True}), now) == Skipped(
        "goal_replay"
    )
    assert session.handle(json.dumps(PLUGIN_FRAME), now).seq == 1
    ended = session.handle('{"type": "match_ended", "match_id": "p-1"}', now)
    assert isinstance(ended, LiveFrame) and ended.status == "ended"
    assert session.handle(json.dumps(PLUGIN_FRAME), now) == Skipped("match_ended")


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"ball": None}, "ball"),
        ({"players": []}, "players"),
        ({"type": "telemetry"}, "type"),
        ({"surprise": 1}, "surprise"),
        ({"players": [{**PLUGIN_FRAME["players"][0], "boost": 33}]}, "boost"),
    ],
)
def test_bad_plugin_frames_say_what_is_wrong(change, complaint):
    with pytest.raises(PluginMessageError, match=complaint):
        PluginSession().handle(json.dumps({**PLUGIN_FRAME, **change}), utcnow())


def test_plugin_token():
    from pydantic import SecretStr

    assert presented_token("Bearer s3cret", None) == "s3cret"
    assert presented_token(None, "s3cret") == "s3cret"
    assert token_ok("s3cret", SecretStr("s3cret"))
    assert not token_ok("wrong", SecretStr("s3cret"))
    assert not token_ok(None, SecretStr("s3cret"))
    assert not token_ok("anything", None)


def test_backoff_doubles_up_to_the_ceiling():
    backoff = Backoff(maximum=4.0)
    delays = [backoff.next_delay() for _ in range(8)]
    ceilings = [0.5, 1, 2, 4, 4, 4, 4, 4]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    backoff.reset()
    assert backoff.next_delay() <= 0.5


def test_a_replay_played_as_several_matches_is_scripted_once(parsed):
    options = PlaybackOptions(max_seconds=5.0)
    matches = build_matches([parsed], 3, options, loop=True)
    script = matches[0].script
    assert script is not None and all(m.script is script for m in matches)
    alone = build_matches([parsed, parsed], 2, options, loop=True)
    assert [m.script for m in alone] == [None, None], "a replay one match plays is not kept"
    expected = [
        (at, json.dumps(message, separators=(",", ":")), message["event"] == "game:update_state")
        for at, message in sos_messages(parsed, "sim-0123456789abcdef", options)
    ]
    for guid in ("sim-0123456789abcdef", "sim-0123456789abcdef"):  # made, then kept
        assert list(script.texts(guid)) == expected
    other = list(script.texts("sim-fedcba9876543210"))
    assert [json.loads(text).get("data", {}).get("match_guid") for _, text, _ in other] == [
        "sim-fedcba9876543210"
    ] * len(expected)


async def test_simulator_serves_sos_over_websocket(parsed):
    options = PlaybackOptions(speed=20.0, max_seconds=3.0)
    simulator = SosSimulator(build_matches([parsed], 2, options, loop=False))
    await simulator.start("127.0.0.1", 0)
    port = simulator.port
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/7") as missing:
                assert missing.status == 404
            async with http.ws_connect(f"ws://127.0.0.1:{port}/1") as ws:
                events = []
                async for message in ws:
                    events.append(json.loads(message.data)["event"])
                    if events[-1] == "game:podium_start":
                        break
        await asyncio.wait_for(simulator.matches[1].done.wait(), 10)
    finally:
        await simulator.stop()
    assert events[:3] == ["wsRelay:info", "game:match_created", "game:initialized"]
    updates = events.count("game:update_state")
    assert updates == simulator.matches[1].frames_sent
    assert abs(updates - 3.0 * parsed.fps) <= 2
    assert events[-2:] == ["game:match_ended", "game:podium_start"]
    assert simulator.matches[0].frames_sent == 0, "match 0 waits for its own client"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_simulate_stops_cleanly_on_sigterm_and_sigint(standard_replay, sig):
    simulate = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "services.cli", "simulate", str(standard_replay.path)),
        *("--port", "0", "--loop"),
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert simulate.stdout is not None
        line = (await asyncio.wait_for(simulate.stdout.readline(), 60)).decode()
        port = int(re.search(r"ws://127\.0\.0\.1:(\d+)/0", line).group(1))  # type: ignore[union-attr]
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(f"ws://127.0.0.1:{port}/") as ws,
        ):
            await ws.receive_str()  # the match is on: a client is connected
            simulate.send_signal(sig)
            while (await asyncio.wait_for(ws.receive(), 5)).type == aiohttp.WSMsgType.TEXT:
                pass  # frames sent before the signal; then the server closes the connection
            assert ws.closed or ws.close_code is not None
        assert await asyncio.wait_for(simulate.wait(), 5) == 0
        rest = (await simulate.stdout.read()).decode()
        assert f"stopped by {sig.name}" in rest
    finally:
        if simulate.returncode is None:
            simulate.kill()
            await simulate.wait()
