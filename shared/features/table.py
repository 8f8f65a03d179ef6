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

FEATURE_SCHEMA_VERSION = 2

TEAMMATE_SLOTS = 2
OPPONENT_SLOTS = 3

OTHER_CAR_FIELDS = (
    "present", "rel_x", "rel_y", "rel_z", "vx", "vy", "boost", "dist_ball", "goal_side",
)  # fmt: skip


def _slot_names(prefix: str, slots: int) -> list[str]:
    return [f"{prefix}{slot}_{field}" for slot in range(slots) for field in OTHER_CAR_FIELDS]


FEATURE_NAMES: tuple[str, ...] = (
    *("ball_x", "ball_y", "ball_z", "ball_vx", "ball_vy", "ball_vz", "ball_speed"),
    *("x", "y", "z", "vx", "vy", "vz", "speed", "boost", "jumping", "demolished"),
    *("on_ground", "on_wall", "forward_x", "forward_y", "pitch"),
    *("ball_rel_x", "ball_rel_y", "ball_rel_z", "ball_dist"),
    *("ball_rel_vx", "ball_rel_vy", "ball_rel_vz", "closing_speed"),
    *("own_goal_dx", "own_goal_dy", "own_goal_dist", "opp_goal_dist"),
    *_slot_names("mate", TEAMMATE_SLOTS),
    *_slot_names("opp", OPPONENT_SLOTS),
    # team level: the same for every player of a team
    *("ball_own_goal_dist", "ball_opp_goal_dist", "ball_v_to_opp_goal", "ball_v_to_own_goal"),
    *("mates_goal_side", "opps_goal_side", "team_min_goal_dist", "opp_min_goal_dist"),
    *("team_ball_dist", "opp_ball_dist", "closest_in_team", "team_closest_to_ball"),
    *("possession", "touched_last", "since_touch", "since_kickoff", "score_diff"),
    *("goals_for", "goals_against", "seconds_remaining", "team_size"),
    # the recent past of the segment (windows stop at its kickoff)
    *("ball_x_1s", "ball_y_1s", "ball_z_1s", "ball_x_2s", "ball_y_2s", "ball_z_2s"),
    *("ball_y_mean_5s", "ball_y_mean_10s", "attacking_third_10s", "defending_third_10s"),
    *("team_touches_5s", "opp_touches_5s"),
)
N_FEATURES = len(FEATURE_NAMES)

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
