"""The feature table: per-frame, player-centric features of a replay or a live stream, the
names of its columns and its schema version. Shared by the featurizer, the scorer, the live
service and the trainer.

Every player sees the pitch from its own side: team 1's frames are rotated 180 degrees about
the vertical axis, so every player defends the goal at -y and attacks +y.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from shared.events import GoalInfo, PlayerInfo

# the names come from the feature blocks that compute them (rows.py)
from shared.features.blocks import FEATURE_NAMES as FEATURE_NAMES
from shared.features.blocks import N_FEATURES as N_FEATURES

FEATURE_SCHEMA_VERSION = 2


# The pitch mirrored left-right (x -> -x) is the same game: these features change sign under it
# and every other one stays (slots are ranked by distance, the thirds and goals lie on y).
MIRROR_ODD_FEATURES = frozenset(
    name
    for name in FEATURE_NAMES
    if name in ("ball_x", "ball_vx", "x", "vx", "forward_x", "ball_rel_x", "ball_rel_vx")
    or name in ("own_goal_dx", "ball_x_1s", "ball_x_2s")
    or (name.endswith(("_rel_x", "_vx")) and name.startswith(("mate", "opp")))
)
MIRROR_SIGNS = np.array([-1.0 if n in MIRROR_ODD_FEATURES else 1.0 for n in FEATURE_NAMES], "f4")


@dataclass(frozen=True)
class FeatureTable:
    replay_id: str
    time: np.ndarray  # [T]
    segment: np.ndarray  # [T] kickoff-to-goal segment index (goals scored before this frame)
    live: np.ndarray  # [T] bool: between a kickoff and the next goal
    features: np.ndarray  # [T, P, N_FEATURES] float32
    label_score: np.ndarray  # [T, P] bool: the player's team scores within the horizon
    label_concede: np.ndarray  # [T, P] bool: the player's team concedes within the horizon
    touched: np.ndarray  # [T, P] bool: the player touched the ball in this frame
    players: list[PlayerInfo]
    goals: list[GoalInfo]
    map_name: str | None = None  # the arena and the game mode: see shared/scope.py
    game_mode: str | None = None
    # the horizon of label_score and label_concede (None: a file written before it was recorded)
    label_horizon_seconds: float | None = None

    def frames(self, start: int, stop: int) -> FeatureTable:
        """The table of frames [start, stop): every per-frame field sliced alike."""
        window = slice(start, stop)
        return replace(
            self,
            time=self.time[window],
            segment=self.segment[window],
            live=self.live[window],
            features=self.features[window],
            label_score=self.label_score[window],
            label_concede=self.label_concede[window],
            touched=self.touched[window],
        )
