"""A replay played back as the SOS plugin's WebSocket feed: the game for tests, demos and
``bench/live.py``.

The replay is parsed by the project's parser at ``rate`` frames per second; each frame becomes
a ``game:update_state`` message in the newer SOS shape (match GUID, ball and car locations,
rotation in Unreal rotator units, speeds in km/h, boost 0..100), sent at real time times
``speed``. Around each goal the feed does what the game does: ``game:goal_scored``, then a
goal replay (``game:replay_start``, the last seconds before the goal again with
``isReplay: true``, ``game:replay_will_end``, ``game:replay_end``) while the clock stands
still; the match ends with ``game:match_ended`` and ``game:podium_start``. ``legacy=True``
sends what older plugin builds send: no GUID, no locations.

Match k of a server is at ``ws://host:port/k`` (``/`` is match 0). Each match starts when its
first client connects; with several matches, their frames are spread evenly over one frame
interval, as independent games would be. :meth:`SosSimulator.run_until_stopped` serves until
the matches are played or SIGTERM or SIGINT arrives, then closes every connection within
``CLOSE_TIMEOUT_SECONDS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from shared.frames import BALL_FIELD, PLAYER_FIELD, ParsedReplay

log = logging.getLogger(__name__)

KMH_PER_UU_S = 0.036
RADIANS_TO_URU = 32768.0 / math.pi
TEAM_NAMES = ("Blue", "Orange")
TEAM_COLORS = ("1873FF", "C26418")
SUPERSONIC_UU_S = 2200.0
ON_GROUND_MAX_Z = 25.0
# On stop, how long a client may take to answer the close handshake, and open connections to end.
CLOSE_TIMEOUT_SECONDS = 1.0
UPDATE = "game:update_state"


@dataclass(frozen=True)
class PlaybackOptions:
    speed: float = 1.0
    goal_replay_seconds: float = 3.0
    max_seconds: float | None = None  # of game time; None = the whole replay
    legacy: bool = False  # an older plugin build: no match GUID, no locations


def sos_messages(
    parsed: ParsedReplay, match_guid: str, options: PlaybackOptions
) -> Iterator[tuple[float, dict[str, Any]]]:
    """(seconds after the start at speed 1, SOS message) for one match, in order."""
    guid = {} if options.legacy else {"match_guid": match_guid}
    t0 = float(parsed.time[0])
    end = parsed.n_frames
    if options.max_seconds is not None:
        end = int(np.searchsorted(parsed.time, t0 + options.max_seconds, side="right"))
    goals = sorted(parsed.goals, key=lambda g: g.time)
    goal_frames = [int(np.searchsorted(parsed.time, g.time, side="left")) for g in goals]
    interval = 1.0 / parsed.fps
    paused = 0.0  # wall time spent in goal replays so far

    yield 0.0, {"event": "game:match_created", "data": {**guid}}
    yield 0.0, {"event": "game:initialized", "data": {**guid}}
    for i in range(end):
        at = float(parsed.time[i]) - t0 + paused
        yield at, _update_state(parsed, i, guid, options, replay=False)
        for goal, frame in zip(goals, goal_frames, strict=True):
            if frame != i:
                continue
            yield at, {"event": "game:goal_scored", "data": {**guid, **_goal(parsed, goal)}}
            replay_from = int(np.searchsorted(parsed.time, goal.time - options.goal_replay_seconds))
            at += interval
            yield at, {"event": "game:replay_start", "data": {**guid}}
            for j in range(replay_from, i + 1):
                at += interval
                yield at, _update_state(parsed, j, guid, options, replay=True)
            yield at, {"event": "game:replay_will_end", "data": {**guid}}
            at += interval
            yield at, {"event": "game:replay_end", "data": {**guid}}
            paused = at - (float(parsed.time[i]) - t0)
    at = float(parsed.time[end - 1]) - t0 + paused + interval
    blue, orange = _score_at(parsed, float(parsed.time[end - 1]))
    winner = 0 if blue >= orange else 1
    yield at, {"event": "game:match_ended", "data": {**guid, "winner_team_num": winner}}
    yield at, {"event": "game:podium_start", "data": {**guid}}


def _score_at(parsed: ParsedReplay, time: float) -> tuple[int, int]:
    blue = sum(1 for g in parsed.goals if g.team == 0 and g.time <= time)
    orange = sum(1 for g in parsed.goals if g.team == 1 and g.time <= time)
    return blue, orange


def _goal(parsed: ParsedReplay, goal: Any) -> dict[str, Any]:
    scorer = next((p for p in parsed.players if p.name == goal.scorer), None)
    i = int(np.searchsorted(parsed.time, goal.time))
    speed = float(np.linalg.norm(parsed.ball[min(i, parsed.n_frames - 1), 3:6]))
    return {
        "scorer": {
            "name": goal.scorer or "",
            "id": f"{scorer.name}_{scorer.index + 1}" if scorer else "",
            "teamnum": goal.team,
        },
        "assister": {"name": "", "id": ""},
        "goalspeed": round(speed * KMH_PER_UU_S, 2),
        "goaltime": round(goal.time, 2),
        "ball_last_touch": {"player": "", "speed": 0},
    }


def _update_state(
    parsed: ParsedReplay, i: int, guid: dict[str, str], options: PlaybackOptions, *, replay: bool
) -> dict[str, Any]:
    time = float(parsed.time[i])
    blue, orange = _score_at(parsed, time)
    remaining = float(parsed.seconds_remaining[i])
    ball = parsed.ball[i]
    game: dict[str, Any] = {
        "arena": "",
        "hasTarget": False,
        "target": "",
        "hasWinner": False,
        "winner": "",
        "isOT": bool(remaining <= 0 and blue == orange and i > 0),
        "isReplay": replay,
        "teams": [
            {"name": name, "score": score, "color_primary": color, "color_secondary": "E5E5E5"}
            for name, score, color in zip(TEAM_NAMES, (blue, orange), TEAM_COLORS, strict=True)
        ],
    }
    ball_speed = round(float(np.linalg.norm(ball[3:6])) * KMH_PER_UU_S, 2)
    if options.legacy:
        game.update(time=math.ceil(remaining), ballSpeed=ball_speed, ballTeam=255)
    else:
        game.update(
            time_seconds=math.ceil(remaining),
            elapsed=round(time - float(parsed.time[0]), 4),
            frame=i,
            ball={"location": _xyz(ball, BALL_FIELD), "speed": ball_speed, "team": 255},
        )
    goals_by_name: dict[str, int] = {}
    for goal in parsed.goals:
        if goal.time <= time and goal.scorer:
            goals_by_name[goal.scorer] = goals_by_name.get(goal.scorer, 0) + 1
    touches = np.asarray(parsed.touches).reshape(-1, 2)
    touches = touches[touches[:, 0] <= i, 1]  # the players of the touches so far
    players = {}
    for player in parsed.players:
        pid = f"{player.name}_{player.index + 1}"
        stats = {
            "goals": goals_by_name.get(player.name, 0),
            "touches": int(np.count_nonzero(touches == player.index)),
        }
        players[pid] = _player(parsed.cars[i, player.index], player, pid, stats, options)
    return {
        "event": "game:update_state",
        "data": {"event": "gamestate", **guid, "hasGame": True, "game": game, "players": players},
    }


def _xyz(row: np.ndarray, fields: dict[str, int]) -> dict[str, float]:
    return {axis.upper(): round(float(row[fields[axis]]), 2) for axis in ("x", "y", "z")}


def _player(
    car: np.ndarray, player: Any, pid: str, stats: dict[str, int], options: PlaybackOptions
) -> dict[str, Any]:
    f = PLAYER_FIELD
    speed = float(np.linalg.norm(car[[f["vx"], f["vy"], f["vz"]]]))
    dead = bool(car[f["demolished"]] > 0.5)
    entry: dict[str, Any] = {
        "name": player.name,
        "id": pid,
        "primaryID": player.platform_id or "",
        "team": player.team,
        "boost": round(float(car[f["boost"]]) * 100),
        "speed": round(speed * KMH_PER_UU_S, 2),
        "isDead": dead,
        "hasCar": not dead,
        "attacker": "",
        "isSonic": speed >= SUPERSONIC_UU_S,
        "isPowersliding": False,
        "goals": stats["goals"],
        "assists": 0,
        "saves": 0,
        "shots": 0,
        "score": 0,
        "touches": stats["touches"],
        "cartouches": 0,
        "demos": 0,
        "shortcut": player.index + 1,
    }
    if not options.legacy:
        entry["location"] = {
            **_xyz(car, f),
            **{
                axis: round(float(car[f[axis]]) * RADIANS_TO_URU)
                for axis in ("pitch", "roll", "yaw")
            },
        }
        airborne = bool(car[f["jumping"]] > 0.5) or float(car[f["z"]]) > ON_GROUND_MAX_Z * 4
        entry["onGround"] = not airborne
        entry["onWall"] = False
    return entry


class Script:
    """The messages of one replay (:func:`sos_messages`) as JSON text, made as they are first
    played. A script kept (``keep``) is made once, for every match that plays the replay and
    every time it is played again, each match's GUID put in as it is sent: so a load generator
    playing one replay as many matches costs little CPU beside the path it loads. It keeps
    about 3 kB a message: ~30 MB for a 5-minute replay at 30 Hz."""

    def __init__(self, parsed: ParsedReplay, options: PlaybackOptions, keep: bool = True) -> None:
        # a GUID of the same form as the real ones, in no replay's text: replaced by them
        self._placeholder = f"sim-{uuid.uuid4().hex[:16]}"
        self._messages = (
            (at, json.dumps(message, separators=(",", ":")), message["event"] == UPDATE)
            for at, message in sos_messages(parsed, self._placeholder, options)
        )
        self._made: list[tuple[float, str, bool]] = []
        self._keep = keep

    def texts(self, guid: str) -> Iterator[tuple[float, str, bool]]:
        """(seconds after the start at speed 1, message text, whether it is a game update)
        for a match with ``guid``, in order."""
        index = 0
        while True:
            if index == len(self._made):
                made = next(self._messages, None)
                if made is None:
                    return
                if not self._keep:
                    yield made[0], made[1].replace(self._placeholder, guid), made[2]
                    continue
                self._made.append(made)
            at, text, is_update = self._made[index]
            yield at, text.replace(self._placeholder, guid), is_update
            index += 1


@dataclass
class SimulatedMatch:
    """One replay fed to every client connected to its path, starting with the first one."""

    parsed: ParsedReplay
    options: PlaybackOptions
    loop: bool = False
    phase: float = 0.0  # seconds to wait before the first message
    script: Script | None = None  # shared with the other matches playing the same replay
    clients: set[web.WebSocketResponse] = field(default_factory=set)
    first_client: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)  # played (without ``loop``)
    matches_played: int = 0
    frames_sent: int = 0

    async def play(self) -> None:
        await self.first_client.wait()
        await asyncio.sleep(self.phase)
        while True:
            await self._play_once(f"sim-{uuid.uuid4().hex[:16]}")
            self.matches_played += 1
            if not self.loop:
                self.done.set()
                return

    async def _play_once(self, guid: str) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        script = self.script or Script(self.parsed, self.options, keep=False)
        for at, text, is_update in script.texts(guid):
            delay = start + at / self.options.speed - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._broadcast(text)
            if is_update:
                self.frames_sent += 1

    async def _broadcast(self, text: str) -> None:
        for ws in list(self.clients):
            if ws.closed:
                self.clients.discard(ws)
                continue
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str(text)


class SosSimulator:
    """An SOS-plugin WebSocket server playing ``matches`` (match k at path ``/k``)."""

    def __init__(self, matches: list[SimulatedMatch]) -> None:
        self.matches = matches
        self.app = web.Application()
        self.app.router.add_get("/", self._connect)
        self.app.router.add_get("/{index:[0-9]+}", self._connect)
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(
            self.app, access_log=None, shutdown_timeout=CLOSE_TIMEOUT_SECONDS
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self._tasks = [asyncio.create_task(match.play()) for match in self.matches]

    @property
    def port(self) -> int:
        """The port listened on (useful after starting on port 0)."""
        assert self._runner is not None, "not started"
        return int(self._runner.addresses[0][1])

    async def wait_done(self) -> None:
        """Until every match has been played (forever with ``loop``)."""
        await asyncio.gather(*self._tasks)

    async def run_until_stopped(
        self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)
    ) -> signal.Signals | None:
        """Serve until every match is played or one of ``signals`` arrives, then :meth:`stop`.

        Returns the signal that stopped it, None if the matches ended.
        """
        loop = asyncio.get_running_loop()
        received: list[signal.Signals] = []
        asked = asyncio.Event()

        def asked_to_stop(sig: signal.Signals) -> None:
            received.append(sig)
            asked.set()

        for sig in signals:
            loop.add_signal_handler(sig, asked_to_stop, sig)
        played = asyncio.ensure_future(self.wait_done())
        stopping = asyncio.ensure_future(asked.wait())
        try:
            await asyncio.wait({played, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if played.done():
                played.result()  # a match that failed raises here
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            played.cancel()
            stopping.cancel()
            await self.stop()
        return received[0] if received else None

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(
            *(ws.close() for match in self.matches for ws in list(match.clients)),
            return_exceptions=True,
        )
        if self._runner is not None:
            await self._runner.cleanup()

    async def _connect(self, request: web.Request) -> web.StreamResponse:
        index = int(request.match_info.get("index", "0"))
        if index >= len(self.matches):
            raise web.HTTPNotFound(text=f"no match {index}: this server plays {len(self.matches)}")
        ws = web.WebSocketResponse(heartbeat=10, timeout=CLOSE_TIMEOUT_SECONDS)
        await ws.prepare(request)
        match = self.matches[index]
        match.clients.add(ws)
        match.first_client.set()
        await ws.send_str(json.dumps({"event": "wsRelay:info", "data": "Connected!"}))
        async for message in ws:  # SOS clients may send wsRelay:register; nothing to answer
            if message.type == WSMsgType.ERROR:
                break
        match.clients.discard(ws)
        return ws


def build_matches(
    replays: list[ParsedReplay], n_matches: int, options: PlaybackOptions, *, loop: bool
) -> list[SimulatedMatch]:
    """``n_matches`` matches cycling over ``replays``, their frames spread over one interval."""
    interval = 1.0 / replays[0].fps / options.speed
    shared = [
        Script(replay, options) if n_matches > k + len(replays) else None
        for k, replay in enumerate(replays)
    ]  # the replays played by more than one match
    return [
        SimulatedMatch(
            replays[k % len(replays)],
            options,
            loop=loop,
            phase=interval * k / n_matches,
            script=shared[k % len(replays)],
        )
        for k in range(n_matches)
    ]
