"""The parsed-replay data model shared by parser (writer) and featurizer (reader).

Frames are stored as one compressed ``.npz`` per replay: dense float32 arrays sampled at a
fixed rate, the ball touches, plus a JSON header with players and goals (the ``frames.parsed``
event repeats it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import TypeAdapter

from shared.events import GoalInfo, PlayerInfo

FRAMES_FORMAT_VERSION = 2  # 2: touches

BALL_FIELDS = ("x", "y", "z", "vx", "vy", "vz")
PLAYER_FIELDS = (
    "x", "y", "z",
    "roll", "pitch", "yaw",  # rotation about x, y, z (radians)
    "vx", "vy", "vz",
    "boost",        # 0..1
    "jumping",      # any jump/dodge active
    "demolished",   # 1 while the car is demolished / absent
)  # fmt: skip
PLAYER_FIELD = {name: i for i, name in enumerate(PLAYER_FIELDS)}
BALL_FIELD = {name: i for i, name in enumerate(BALL_FIELDS)}

_players_adapter = TypeAdapter(list[PlayerInfo])
_goals_adapter = TypeAdapter(list[GoalInfo])


@dataclass(frozen=True)
class ParsedReplay:
    replay_id: str
    fps: float
    time: np.ndarray  # [T] replay seconds
    seconds_remaining: np.ndarray  # [T]
    ball: np.ndarray  # [T, len(BALL_FIELDS)]
    cars: np.ndarray  # [T, P, len(PLAYER_FIELDS)]
    players: list[PlayerInfo]
    goals: list[GoalInfo]
    team_size: int
    # [K, 2] int32 (sampled frame index, player index) per ball touch, sorted by frame
    touches: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int32))
    map_name: str | None = None  # the header's MapName (the arena), when it has one
    game_mode: str | None = None  # shared.scope.game_mode of the replay (None: not known)

    @property
    def n_frames(self) -> int:
        return int(self.time.shape[0])

    def save(self, path: Path) -> None:
        header = {
            "format_version": FRAMES_FORMAT_VERSION,
            "replay_id": self.replay_id,
            "fps": self.fps,
            "team_size": self.team_size,
            "players": _players_adapter.dump_python(self.players, mode="json"),
            "goals": _goals_adapter.dump_python(self.goals, mode="json"),
            "map_name": self.map_name,
            "game_mode": self.game_mode,
        }
        with path.open("wb") as handle:
            np.savez_compressed(
                handle,
                header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
                time=self.time,
                seconds_remaining=self.seconds_remaining,
                ball=self.ball,
                cars=self.cars,
                touches=self.touches.astype(np.int32).reshape(-1, 2),
            )

    @classmethod
    def load(cls, path: Path) -> ParsedReplay:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(data["header"].tobytes())
            if header["format_version"] != FRAMES_FORMAT_VERSION:
                raise ValueError(f"{path}: frames format {header['format_version']} unsupported")
            return cls(
                replay_id=header["replay_id"],
                fps=header["fps"],
                time=data["time"],
                seconds_remaining=data["seconds_remaining"],
                ball=data["ball"],
                cars=data["cars"],
                players=_players_adapter.validate_python(header["players"]),
                goals=_goals_adapter.validate_python(header["goals"]),
                team_size=header["team_size"],
                touches=data["touches"],
                map_name=header.get("map_name"),  # absent from files written before them
                game_mode=header.get("game_mode"),
            )
