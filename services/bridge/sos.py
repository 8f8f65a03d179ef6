"""The SOS BakkesMod plugin's WebSocket feed -> :class:`LiveFrame`. Pure: no I/O.

SOS (the plugin tournament overlays use, ``ws://localhost:49122``) sends JSON messages
``{"event": "game:update_state", "data": {...}}`` about ten to thirty times a second, plus
``game:match_created``, ``game:initialized``, ``game:goal_scored``, ``game:replay_start``,
``game:replay_end``, ``game:match_ended``, ``game:match_destroyed`` and others. What it sends
depends on the plugin build:

- newer builds: ``data.match_guid``; ``game.ball`` = ``{location: {X, Y, Z}, speed, team}``;
  ``game.time_seconds``; each player's ``location`` = ``{X, Y, Z, pitch, roll, yaw}``
  (rotation in Unreal rotator units, 65536 per turn) and ``onGround``/``onWall``;
- older builds: no match GUID, no locations at all (``game.ballSpeed``, ``game.ballTeam``,
  ``game.time``), only per-player stats, boost and speed.

Speeds are in km/h, boost in 0..100. A missing field is None in the frame, never a guess; the
live scorer skips frames it cannot place on the pitch. Frames are dropped while a goal replay
plays (between ``replay_start`` and ``replay_end``, or whenever ``game.isReplay``) and after
``match_ended``.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic_core import from_json

from shared.events import LiveFrame

URU_TO_RADIANS = math.pi / 32768.0  # Unreal rotator units -> radians
KMH_TO_UU_PER_S = 1 / 0.036  # 1 Unreal unit = 1 cm
MATCH_START_EVENTS = ("game:match_created", "game:initialized")


class SosMessageError(ValueError):
    """A message that is not an SOS ``{"event": ..., "data": ...}`` object."""


@dataclass(frozen=True)
class Skipped:
    """An update deliberately not forwarded; ``reason`` labels the metric."""

    reason: str


@dataclass
class SosSession:
    """Follows one SOS feed across messages (and reconnects): the current match, its frame
    counter, and whether a goal replay is playing."""

    match_id: str | None = None
    seq: int = 0
    in_replay: bool = False
    ended: bool = False
    last_state: LiveFrame | None = field(default=None, repr=False)

    def handle(self, raw: str | bytes, received_at: datetime) -> LiveFrame | Skipped | None:
        """The frame to forward for one message, a :class:`Skipped`, or None (nothing to say)."""
        event, data = parse_message(raw)
        if event in MATCH_START_EVENTS:
            self._start(_guid(data), new_match=event == "game:match_created")
        elif event == "game:replay_start":
            self.in_replay = True
        elif event == "game:replay_end":
            self.in_replay = False
        elif event == "game:match_ended":
            return self._end(received_at)
        elif event == "game:match_destroyed":
            self.match_id, self.ended, self.in_replay = None, False, False
        elif event == "game:update_state":
            return self._update(data, received_at)
        return None

    def _start(self, guid: str | None, *, new_match: bool) -> None:
        """Begin a match, unless the message is about the one in progress: without a GUID, only
        ``match_created`` says a new one began."""
        in_progress = self.match_id is not None and not self.ended
        if in_progress and (guid == self.match_id or (guid is None and not new_match)):
            return
        self.match_id = guid or f"sos-{uuid.uuid4().hex[:16]}"
        self.seq, self.in_replay, self.ended, self.last_state = 0, False, False, None

    def _end(self, received_at: datetime) -> LiveFrame | None:
        if self.match_id is None or self.ended:
            return None
        self.ended = True
        last = self.last_state
        return LiveFrame(
            match_id=self.match_id,
            source="sos",
            seq=self._next_seq(),
            received_at=received_at,
            seconds_remaining=last.seconds_remaining if last else None,
            overtime=last.overtime if last else False,
            blue_goals=last.blue_goals if last else 0,
            orange_goals=last.orange_goals if last else 0,
            status="ended",
        )

    def _update(self, data: Any, received_at: datetime) -> LiveFrame | Skipped:
        if not isinstance(data, dict) or not isinstance(data.get("game"), dict):
            return Skipped("no_game")
        if data.get("hasGame") is False:
            return Skipped("no_game")
        game: dict[str, Any] = data["game"]
        if self.in_replay or _bool(game.get("isReplay")):
            return Skipped("goal_replay")
        guid = _guid(data)
        if self.match_id is None or (guid is not None and guid != self.match_id):
            self._start(guid, new_match=True)
        elif self.ended:
            return Skipped("match_ended")
        assert self.match_id is not None
        blue, orange = _team_scores(game.get("teams"))
        # validated as a whole (one call, not one per player): the same checks
        frame = LiveFrame.model_validate(
            {
                "match_id": self.match_id,
                "source": "sos",
                "seq": self._next_seq(),
                "received_at": received_at,
                "game_time": _num(game.get("elapsed")),
                "seconds_remaining": _num(game.get("time_seconds", game.get("time"))),
                "overtime": _bool(game.get("isOT")),
                "blue_goals": blue,
                "orange_goals": orange,
                "ball": _ball(game.get("ball")),
                "players": _players(data.get("players")),
            }
        )
        self.last_state = frame
        return frame

    def _next_seq(self) -> int:
        seq, self.seq = self.seq, self.seq + 1
        return seq


def parse_message(raw: str | bytes) -> tuple[str, Any]:
    try:
        message = from_json(raw)  # the values json.loads gives, in half its time
    except ValueError as error:
        raise SosMessageError(f"not JSON: {error}") from error
    if not isinstance(message, dict) or not isinstance(message.get("event"), str):
        raise SosMessageError('not an SOS message: expected {"event": "...", "data": ...}')
    return message["event"], message.get("data")


def _guid(data: Any) -> str | None:
    guid = data.get("match_guid") if isinstance(data, dict) else None
    return guid[:128] if isinstance(guid, str) and guid else None


def _num(value: Any) -> float | None:
    """A finite number from a JSON value (some builds send numbers as strings), else None."""
    kind = type(value)
    if kind is float:  # most values: ~90 per update
        return value if math.isfinite(value) else None
    if kind is int:
        return float(value)
    if kind is bool or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _int(value: Any) -> int:
    number = _num(value)
    return int(number) if number is not None else 0


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() in ("true", "1")
    return bool(value)


def _team_scores(teams: Any) -> tuple[int, int]:
    """``teams`` is a list ``[blue, orange]`` in newer builds, ``{"0": .., "1": ..}`` in older."""
    if isinstance(teams, dict):
        teams = [teams.get("0", teams.get(0)), teams.get("1", teams.get(1))]
    if not isinstance(teams, list):
        return 0, 0
    scores = [_int(t.get("score")) if isinstance(t, dict) else 0 for t in teams[:2]]
    blue, orange, *_ = [*scores, 0, 0]
    return blue, orange


def _xyz(location: Any) -> tuple[float, float, float] | None:
    if not isinstance(location, dict):
        return None
    xyz = (_num(location.get("X")), _num(location.get("Y")), _num(location.get("Z")))
    return None if None in xyz else xyz  # type: ignore[return-value]


def _speed(value: Any) -> float | None:
    kmh = _num(value)
    return abs(kmh) * KMH_TO_UU_PER_S if kmh is not None else None


def _ball(ball: Any) -> dict[str, Any] | None:
    """A :class:`LiveBall`'s fields."""
    if not isinstance(ball, dict) or (xyz := _xyz(ball.get("location"))) is None:
        return None
    return {"x": xyz[0], "y": xyz[1], "z": xyz[2], "speed": _speed(ball.get("speed"))}


def _players(players: Any) -> list[dict[str, Any]]:
    if not isinstance(players, dict):
        return []
    result = [_player(key, value) for key, value in players.items()]
    return [p for p in result if p is not None]


def _player(key: str, player: Any) -> dict[str, Any] | None:
    """A :class:`LivePlayer`'s fields."""
    if not isinstance(player, dict):
        return None
    team = _num(player.get("team"))
    if team not in (0.0, 1.0):  # spectators and unknown teams
        return None
    location: Any = player.get("location")  # a dict whenever xyz is not None
    xyz = _xyz(location)
    on_ground, on_wall = player.get("onGround"), player.get("onWall")
    airborne = on_ground is not None and not _bool(on_ground) and not _bool(on_wall)
    boost = _num(player.get("boost"))
    return {
        "id": str(player.get("id") or key)[:256] or "?",
        "name": str(player.get("name") or "")[:256],
        "team": int(team),
        "x": xyz[0] if xyz else None,
        "y": xyz[1] if xyz else None,
        "z": xyz[2] if xyz else None,
        "roll": _rotation(location, "roll") if xyz else None,
        "pitch": _rotation(location, "pitch") if xyz else None,
        "yaw": _rotation(location, "yaw") if xyz else None,
        "speed": _speed(player.get("speed")),
        "boost": min(max((boost or 0.0) / 100.0, 0.0), 1.0),
        "jumping": airborne,
        "demolished": _bool(player.get("isDead")) or player.get("hasCar") is False,
        "goals": _int(player.get("goals")),
        "shots": _int(player.get("shots")),
        "saves": _int(player.get("saves")),
        "assists": _int(player.get("assists")),
        "touches": _int(player.get("touches")),
    }


def _rotation(location: dict[str, Any], axis: str) -> float | None:
    value = _num(location.get(axis))
    return value * URU_TO_RADIANS if value is not None else None
