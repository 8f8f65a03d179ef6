"""The custom-plugin feed: JSON frames over a token-protected WebSocket. Pure: no I/O.

A plugin connects to ``ws://<bridge>:49123/plugin`` with ``Authorization: Bearer <token>``
(or ``?token=<token>`` where it cannot set headers) and sends one JSON text message per game
tick, in the units of ``shared/frames.py`` (Unreal units, uu/s, radians, boost 0..1)::

    {"type": "frame", "match_id": "my-match-1", "time": 12.53, "seconds_remaining": 287.4,
     "overtime": false, "blue_goals": 0, "orange_goals": 1, "replay": false,
     "ball": {"x": 0, "y": 0, "z": 93.1, "vx": 0, "vy": 0, "vz": 0},
     "players": [{"id": "steam|7656...", "name": "A", "team": 0, "x": -2048, "y": -2560,
                  "z": 17, "roll": 0, "pitch": 0, "yaw": 0.785, "vx": 0, "vy": 0, "vz": 0,
                  "boost": 0.33, "jumping": false, "demolished": false}]}

    {"type": "match_ended", "match_id": "my-match-1"}

``ball`` and ``players`` take exactly the fields of :class:`shared.events.LiveBall` and
:class:`shared.events.LivePlayer`; velocities may be left out (the live scorer estimates them
from successive positions). Frames with ``"replay": true`` (a goal replay) are dropped. A
message that does not fit gets ``{"error": "..."}`` back and a record on ``events.invalid``.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, ValidationError

from services.bridge.sos import Skipped
from shared.events import LiveBall, LiveFrame, LivePlayer


class PluginFrame(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["frame"]
    match_id: str = Field(min_length=1, max_length=128)
    time: float | None = Field(None, description="seconds since the match began")
    seconds_remaining: float | None = None
    overtime: bool = False
    blue_goals: int = Field(0, ge=0)
    orange_goals: int = Field(0, ge=0)
    replay: bool = False
    ball: LiveBall
    players: list[LivePlayer] = Field(min_length=1, max_length=16)


class PluginMatchEnded(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["match_ended"]
    match_id: str = Field(min_length=1, max_length=128)


PluginMessage = Annotated[PluginFrame | PluginMatchEnded, Field(discriminator="type")]
_messages: TypeAdapter[PluginFrame | PluginMatchEnded] = TypeAdapter(PluginMessage)


class PluginMessageError(ValueError):
    """A message that is not a valid plugin frame; the text says what is wrong."""


def parse_plugin_message(raw: str | bytes) -> PluginFrame | PluginMatchEnded:
    try:
        return _messages.validate_json(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or 'message'}: {e['msg']}"
            for e in error.errors()[:5]
        )
        raise PluginMessageError(f"not a valid plugin message: {problems}") from error


@dataclass
class PluginSession:
    """Frame counters of the matches plugins send, across their connections."""

    seqs: dict[str, int] = field(default_factory=dict)
    ended: set[str] = field(default_factory=set)

    def handle(self, raw: str | bytes, received_at: datetime) -> LiveFrame | Skipped:
        message = parse_plugin_message(raw)
        if message.match_id in self.ended:
            return Skipped("match_ended")
        if isinstance(message, PluginMatchEnded):
            self.ended.add(message.match_id)
            return LiveFrame(
                match_id=message.match_id,
                source="plugin",
                seq=self._next_seq(message.match_id),
                received_at=received_at,
                status="ended",
            )
        if message.replay:
            return Skipped("goal_replay")
        return LiveFrame(
            match_id=message.match_id,
            source="plugin",
            seq=self._next_seq(message.match_id),
            received_at=received_at,
            game_time=message.time,
            seconds_remaining=message.seconds_remaining,
            overtime=message.overtime,
            blue_goals=message.blue_goals,
            orange_goals=message.orange_goals,
            ball=message.ball,
            players=message.players,
        )

    def _next_seq(self, match_id: str) -> int:
        seq = self.seqs.get(match_id, 0)
        self.seqs[match_id] = seq + 1
        return seq


def presented_token(authorization: str | None, query_token: str | None) -> str | None:
    """The token from ``Authorization: Bearer <token>``, else from ``?token=``."""
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return query_token


def token_ok(presented: str | None, expected: SecretStr | None) -> bool:
    if not presented or expected is None:
        return False
    return hmac.compare_digest(presented.encode(), expected.get_secret_value().encode())
