"""The feature vector, block by block: each :class:`FeatureBlock` names its columns and
computes them from a :class:`RowView` (what ``rows.py`` has gathered for one pass over
frames x players), and ``FEATURE_BLOCKS`` lists them in ``FEATURE_NAMES`` order. Pure numpy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from shared.features.context import TOUCH_MEMORY_SECONDS, GameContext, vector_length
from shared.features.past import team_past
from shared.features.scales import (
    BALL_SPEED_SCALE,
    CAR_SPEED_SCALE,
    GOALS_CAP,
    MATCH_SECONDS,
    POS_SCALE,
    SCORE_DIFF_CAP,
)
from shared.frames import BALL_FIELD, PLAYER_FIELD, ParsedReplay

TEAMMATE_SLOTS = 2
OPPONENT_SLOTS = 3
OTHER_CAR_FIELDS = (
    "present", "rel_x", "rel_y", "rel_z", "vx", "vy", "boost", "dist_ball", "goal_side",
)  # fmt: skip
# spans of the frame arrays' fields (shared/frames.py): position and velocity
BALL_POS = slice(BALL_FIELD["x"], BALL_FIELD["z"] + 1)
BALL_VEL = slice(BALL_FIELD["vx"], BALL_FIELD["vz"] + 1)
CAR_POS = slice(PLAYER_FIELD["x"], PLAYER_FIELD["z"] + 1)
CAR_VEL = slice(PLAYER_FIELD["vx"], PLAYER_FIELD["vz"] + 1)


def _norm(vectors: np.ndarray) -> np.ndarray:
    return vector_length(vectors, keepdims=True)


def car_speed(velocity: np.ndarray, keepdims: bool = False) -> np.ndarray:
    """The ``speed`` feature: the length of a car's velocity (last axis) / its top speed.
    The live scorer's pace reads it from the frames with this function too."""
    return vector_length(velocity, keepdims=keepdims) / CAR_SPEED_SCALE


@dataclass(frozen=True)
class FeatureBlock:
    """Named feature columns and how to compute them from a :class:`RowView`: ``values``
    gives arrays [R', k] (or [R']-shaped [R', 1]) whose widths add up to ``len(columns)``."""

    name: str
    columns: tuple[str, ...]
    values: Callable[[RowView], list[np.ndarray]]


@dataclass(frozen=True)
class RowView:
    """What the blocks read for the rows of one pass (R' = frames x players of the group), each
    player's view in its own frame: the ball, itself, the others, its team, the match."""

    parsed: ParsedReplay
    context: GameContext
    rows: np.ndarray
    teams: np.ndarray
    viewer: np.ndarray
    frame: np.ndarray
    row_team: np.ndarray
    frame_rows: np.ndarray
    me: np.ndarray
    b_pos: np.ndarray
    b_vel: np.ndarray
    pos: np.ndarray
    vel: np.ndarray
    to_ball: np.ndarray
    ball_dist: np.ndarray
    rel_vel: np.ndarray
    closing: np.ndarray
    own_goal: np.ndarray
    opp_goal: np.ndarray
    yaw: np.ndarray
    pitch: np.ndarray
    opps_of: np.ndarray
    mates_cars: np.ndarray
    opps_cars: np.ndarray
    team_cars: np.ndarray
    team_dist: np.ndarray
    opp_dist: np.ndarray
    mates_dist: np.ndarray
    opps_dist: np.ndarray
    on_ground: np.ndarray
    near_wall: np.ndarray
    toucher: np.ndarray
    possession: np.ndarray
    scored: np.ndarray
    conceded: np.ndarray


def _speed_towards(pos: np.ndarray, vel: np.ndarray, target: np.ndarray) -> np.ndarray:
    direction = target[None, :] - pos
    unit = direction / np.maximum(_norm(direction), 1.0)
    return np.sum(vel * unit, axis=1, keepdims=True) / BALL_SPEED_SCALE


def _min_goal_dist(cars: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Distance of the car nearest to ``goal`` (a demolished car does not count)."""
    if cars.shape[1] == 0:
        return np.full((cars.shape[0], 1), 2.0)
    dist = vector_length(cars[:, :, 0:3] - goal[None, None, :], axis=2)
    dist = np.where(cars[:, :, PLAYER_FIELD["demolished"]] > 0.5, np.inf, dist)
    return _capped_dist(dist.min(axis=1))


def _capped_dist(dist: np.ndarray) -> np.ndarray:
    """[T] -> [T, 1] scaled; 'nobody' (inf: everyone demolished or absent) reads as far away."""
    return np.where(np.isfinite(dist), dist / POS_SCALE, 2.0)[:, None]


def _slots(
    others: np.ndarray,
    pos: np.ndarray,
    b_pos: np.ndarray,
    dist: np.ndarray,
    slots: int,
    defends: float,
) -> np.ndarray:
    """Other cars nearest the ball first, padded with zeros (present=0) to ``slots``.

    ``dist`` is inf for a demolished or absent car: it sorts last and reads as not present.
    ``defends`` is the sign of the goal those cars defend (-1 own team, +1 opponents):
    goal_side says whether the car is between the ball and that goal.
    """
    n_frames = pos.shape[0]
    out = np.zeros((n_frames, slots, len(OTHER_CAR_FIELDS)), dtype=np.float32)
    if others.shape[1] == 0:
        return out.reshape(n_frames, -1)
    order = np.argsort(dist, axis=1)[:, :slots]
    row = np.arange(n_frames)[:, None]
    chosen, chosen_dist = others[row, order], dist[row, order]
    taken = chosen.shape[1]
    present = np.isfinite(chosen_dist)[:, :, None]
    out[:, :taken, 0] = 1.0
    out[:, :taken, 1:4] = (chosen[:, :, 0:3] - pos[:, None, :]) / POS_SCALE
    out[:, :taken, 4:6] = chosen[:, :, 6:8] / CAR_SPEED_SCALE
    out[:, :taken, 6] = chosen[:, :, PLAYER_FIELD["boost"]]
    out[:, :taken, 7] = np.where(present[:, :, 0], chosen_dist, 0.0) / POS_SCALE
    out[:, :taken, 8] = defends * (chosen[:, :, 1] - b_pos[:, None, 1]) > 0
    out[:, :taken] *= present
    return out.reshape(n_frames, -1)


def _slot_names(prefix: str, slots: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{slot}_{field}" for slot in range(slots) for field in OTHER_CAR_FIELDS)


def _ball(v: RowView) -> list[np.ndarray]:
    return [v.b_pos / POS_SCALE, v.b_vel / BALL_SPEED_SCALE, _norm(v.b_vel) / BALL_SPEED_SCALE]


def _car(v: RowView) -> list[np.ndarray]:
    states = [PLAYER_FIELD["boost"], PLAYER_FIELD["jumping"], PLAYER_FIELD["demolished"]]
    return [
        v.pos / POS_SCALE,
        v.vel / CAR_SPEED_SCALE,
        car_speed(v.vel, keepdims=True),
        v.me[:, states],
    ]


def _posture(v: RowView) -> list[np.ndarray]:
    return [
        v.on_ground,
        ~v.on_ground & v.near_wall,
        np.stack([np.cos(v.yaw), np.sin(v.yaw), v.pitch], axis=1),
    ]


def _to_ball(v: RowView) -> list[np.ndarray]:
    return [
        v.to_ball / POS_SCALE,
        v.ball_dist[:, None] / POS_SCALE,
        v.rel_vel / BALL_SPEED_SCALE,
        v.closing[:, None] / CAR_SPEED_SCALE,
    ]


def _goals(v: RowView) -> list[np.ndarray]:
    return [
        (v.pos[:, 0:2] - v.own_goal[None, 0:2]) / POS_SCALE,  # x and y
        _norm(v.pos - v.own_goal) / POS_SCALE,
        _norm(v.pos - v.opp_goal) / POS_SCALE,
    ]


def _mates(v: RowView) -> list[np.ndarray]:
    return [_slots(v.mates_cars, v.pos, v.b_pos, v.mates_dist, TEAMMATE_SLOTS, defends=-1.0)]


def _opponents(v: RowView) -> list[np.ndarray]:
    return [_slots(v.opps_cars, v.pos, v.b_pos, v.opps_dist, OPPONENT_SLOTS, defends=1.0)]


def _ball_and_goals(v: RowView) -> list[np.ndarray]:
    return [
        _norm(v.b_pos - v.own_goal) / POS_SCALE,
        _norm(v.b_pos - v.opp_goal) / POS_SCALE,
        _speed_towards(v.b_pos, v.b_vel, v.opp_goal),
        _speed_towards(v.b_pos, v.b_vel, v.own_goal),
    ]


def _team_shape(v: RowView) -> list[np.ndarray]:
    y, ball_y = PLAYER_FIELD["y"], v.b_pos[:, 1:2]
    opps_goal_side = (
        _mean(v.opps_cars[:, :, y] > ball_y) if v.opps_of.shape[1] else np.zeros((len(v.pos), 1))
    )
    team_nearest, opp_nearest = v.team_dist.min(axis=1), v.opp_dist.min(axis=1)
    return [
        _mean(v.team_cars[:, :, y] < ball_y),
        opps_goal_side,
        _min_goal_dist(v.team_cars, v.own_goal),
        _min_goal_dist(v.opps_cars, v.opp_goal),
        _capped_dist(team_nearest),
        _capped_dist(opp_nearest),
        (np.argmin(v.team_dist, axis=1) == v.viewer)[:, None],
        (team_nearest <= opp_nearest)[:, None],
    ]


def _mean(flags: np.ndarray) -> np.ndarray:
    """[R', k] bool -> [R', 1]: ``np.mean(flags, axis=1, keepdims=True)``'s value (a float64
    sum divided by the count), without its wrapper's overhead."""
    return np.add.reduce(flags, axis=1, dtype=np.float64, keepdims=True) / flags.shape[1]


def _possession(v: RowView) -> list[np.ndarray]:
    return [
        v.possession[:, None],
        (v.toucher == v.viewer)[:, None],
        v.context.since_touch[v.frame_rows, None] / TOUCH_MEMORY_SECONDS,
    ]


def _match(v: RowView) -> list[np.ndarray]:
    since_kickoff = np.minimum(v.context.since_kickoff[v.frame_rows], MATCH_SECONDS)
    return [
        since_kickoff[:, None] / MATCH_SECONDS,
        # np.clip's value, without its wrapper
        np.minimum(np.maximum(v.scored - v.conceded, -SCORE_DIFF_CAP), SCORE_DIFF_CAP)[:, None]
        / SCORE_DIFF_CAP,
        np.minimum(np.stack([v.scored, v.conceded], axis=1), GOALS_CAP) / GOALS_CAP,
        v.parsed.seconds_remaining[v.frame_rows, None] / MATCH_SECONDS,
        np.full((len(v.pos), 1), v.parsed.team_size / 4.0),
    ]


def _recent_past(v: RowView) -> list[np.ndarray]:
    return [team_past(v.parsed, v.teams, v.context, v.rows)[v.row_team, v.frame]]


# The feature vector, block by block: each block names its columns and computes them
FEATURE_BLOCKS: tuple[FeatureBlock, ...] = (
    FeatureBlock(
        "ball", ("ball_x", "ball_y", "ball_z", "ball_vx", "ball_vy", "ball_vz", "ball_speed"), _ball
    ),
    FeatureBlock(
        "car",
        ("x", "y", "z", "vx", "vy", "vz", "speed", "boost", "jumping", "demolished"),
        _car,
    ),
    FeatureBlock("posture", ("on_ground", "on_wall", "forward_x", "forward_y", "pitch"), _posture),
    FeatureBlock(
        "to_ball",
        (
            "ball_rel_x",
            "ball_rel_y",
            "ball_rel_z",
            "ball_dist",
            "ball_rel_vx",
            "ball_rel_vy",
            "ball_rel_vz",
            "closing_speed",
        ),
        _to_ball,
    ),
    FeatureBlock("goals", ("own_goal_dx", "own_goal_dy", "own_goal_dist", "opp_goal_dist"), _goals),
    FeatureBlock("mates", _slot_names("mate", TEAMMATE_SLOTS), _mates),
    FeatureBlock("opponents", _slot_names("opp", OPPONENT_SLOTS), _opponents),
    # team level: the same for every player of a team
    FeatureBlock(
        "ball_and_goals",
        ("ball_own_goal_dist", "ball_opp_goal_dist", "ball_v_to_opp_goal", "ball_v_to_own_goal"),
        _ball_and_goals,
    ),
    FeatureBlock(
        "team_shape",
        (
            "mates_goal_side",
            "opps_goal_side",
            "team_min_goal_dist",
            "opp_min_goal_dist",
            "team_ball_dist",
            "opp_ball_dist",
            "closest_in_team",
            "team_closest_to_ball",
        ),
        _team_shape,
    ),
    FeatureBlock("possession", ("possession", "touched_last", "since_touch"), _possession),
    FeatureBlock(
        "match",
        (
            "since_kickoff",
            "score_diff",
            "goals_for",
            "goals_against",
            "seconds_remaining",
            "team_size",
        ),
        _match,
    ),
    # the recent past of the segment (windows stop at its kickoff)
    FeatureBlock(
        "recent_past",
        (
            "ball_x_1s",
            "ball_y_1s",
            "ball_z_1s",
            "ball_x_2s",
            "ball_y_2s",
            "ball_z_2s",
            "ball_y_mean_5s",
            "ball_y_mean_10s",
            "attacking_third_10s",
            "defending_third_10s",
            "team_touches_5s",
            "opp_touches_5s",
        ),
        _recent_past,
    ),
)
FEATURE_NAMES: tuple[str, ...] = tuple(name for b in FEATURE_BLOCKS for name in b.columns)
N_FEATURES = len(FEATURE_NAMES)
