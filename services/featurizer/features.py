"""Per-frame, player-centric features and replay-borne labels. Pure numpy, no I/O.

Every player sees the pitch from its own side: team 1's frames are rotated 180 degrees about
the vertical axis, so every player defends the goal at -y and attacks +y.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.events import GoalInfo, PlayerInfo
from shared.frames import BALL_FIELD, PLAYER_FIELD, ParsedReplay

FEATURE_SCHEMA_VERSION = 1

GOAL_Y = 5120.0
POS_SCALE = 5120.0
CAR_SPEED_SCALE = 2300.0
BALL_SPEED_SCALE = 6000.0
ON_GROUND_MAX_Z = 25.0
TEAMMATE_SLOTS = 2
OPPONENT_SLOTS = 3
MATCH_SECONDS = 300.0

_OTHER_FIELDS = ("present", "rel_x", "rel_y", "rel_z", "vx", "vy", "boost", "dist_ball")


def _slot_names(prefix: str, slots: int) -> list[str]:
    return [f"{prefix}{slot}_{field}" for slot in range(slots) for field in _OTHER_FIELDS]


FEATURE_NAMES: tuple[str, ...] = (
    *("ball_x", "ball_y", "ball_z", "ball_vx", "ball_vy", "ball_vz", "ball_speed"),
    *("x", "y", "z", "vx", "vy", "vz", "speed", "boost", "jumping", "demolished"),
    *("on_ground", "forward_x", "forward_y", "pitch"),
    *("ball_rel_x", "ball_rel_y", "ball_rel_z", "ball_dist"),
    *("ball_rel_vx", "ball_rel_vy", "ball_rel_vz", "closing_speed"),
    *("own_goal_dx", "own_goal_dy", "own_goal_dist", "opp_goal_dist"),
    *("ball_own_goal_dist", "ball_opp_goal_dist"),
    *_slot_names("mate", TEAMMATE_SLOTS),
    *_slot_names("opp", OPPONENT_SLOTS),
    *("seconds_remaining", "team_size", "closest_in_team", "team_closest_to_ball"),
    "mates_goal_side",
)
N_FEATURES = len(FEATURE_NAMES)


@dataclass(frozen=True)
class FeatureTable:
    replay_id: str
    time: np.ndarray  # [T]
    segment: np.ndarray  # [T] kickoff-to-goal segment index (goals scored before this frame)
    features: np.ndarray  # [T, P, N_FEATURES] float32
    label_score: np.ndarray  # [T, P] bool: the player's team scores within the horizon
    label_concede: np.ndarray  # [T, P] bool: the player's team concedes within the horizon
    players: list[PlayerInfo]


def featurize(parsed: ParsedReplay, horizon_seconds: float = 10.0) -> FeatureTable:
    teams = np.array([player.team for player in parsed.players])
    ball, cars = _oriented(parsed.ball, parsed.cars, teams)
    blocks = [
        _player_block(ball[:, p], cars[:, p], parsed, teams, p) for p in range(len(parsed.players))
    ]
    features = np.stack(blocks, axis=1).astype(np.float32)
    scored = goal_within(parsed.time, parsed.goals, horizon_seconds)  # [T, 2] by team
    return FeatureTable(
        replay_id=parsed.replay_id,
        time=parsed.time,
        segment=np.searchsorted(np.sort([g.time for g in parsed.goals]), parsed.time, "left"),
        features=features,
        label_score=scored[:, teams],
        label_concede=scored[:, 1 - teams],
        players=parsed.players,
    )


def goal_within(time: np.ndarray, goals: list[GoalInfo], horizon: float) -> np.ndarray:
    """[T, 2] bool: team k scores in (t, t + horizon]."""
    result = np.zeros((time.shape[0], 2), dtype=bool)
    for team in (0, 1):
        goal_times = np.sort([g.time for g in goals if g.team == team])
        if goal_times.size == 0:
            continue
        next_index = np.searchsorted(goal_times, time, side="right")
        has_next = next_index < goal_times.size
        next_time = goal_times[np.minimum(next_index, goal_times.size - 1)]
        result[:, team] = has_next & (next_time - time <= horizon)
    return result


def _oriented(
    ball: np.ndarray, cars: np.ndarray, teams: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Ball [T, P, 6] and cars [T, P(viewer), P, F] as seen by each viewer's team."""
    sign = np.where(teams == 0, 1.0, -1.0).astype(np.float32)  # [P]
    ball_view = np.repeat(ball[:, None, :], len(teams), axis=1).copy()
    for axis in ("x", "y", "vx", "vy"):
        ball_view[:, :, BALL_FIELD[axis]] *= sign
    cars_view = np.repeat(cars[:, None, :, :], len(teams), axis=1).copy()
    for axis in ("x", "y", "vx", "vy"):
        cars_view[:, :, :, PLAYER_FIELD[axis]] *= sign[None, :, None]
    cars_view[:, :, :, PLAYER_FIELD["yaw"]] += np.where(teams == 0, 0.0, np.pi)[None, :, None]
    return ball_view, cars_view


def _player_block(
    ball: np.ndarray,
    view: np.ndarray,
    parsed: ParsedReplay,
    teams: np.ndarray,
    p: int,
) -> np.ndarray:
    """[T, N_FEATURES] for player p; ``ball`` [T, 6] and ``view`` [T, P, F] in p's frame."""
    me = view[:, p]
    b_pos, b_vel = ball[:, 0:3], ball[:, 3:6]
    pos, vel = me[:, 0:3], me[:, 6:9]
    to_ball = b_pos - pos
    ball_dist = np.linalg.norm(to_ball, axis=1)
    rel_vel = b_vel - vel
    closing = -np.sum(rel_vel * to_ball, axis=1) / np.maximum(ball_dist, 1.0)
    own_goal = np.array([0.0, -GOAL_Y, 0.0], dtype=np.float32)
    opp_goal = -own_goal
    yaw, pitch = me[:, PLAYER_FIELD["yaw"]], me[:, PLAYER_FIELD["pitch"]]
    mates = (teams == teams[p]) & (np.arange(len(teams)) != p)
    opponents = teams != teams[p]
    all_dist = np.linalg.norm(view[:, :, 0:3] - b_pos[:, None, :], axis=2)  # [T, P]
    team_dist = np.where((teams == teams[p])[None, :], all_dist, np.inf)
    columns = [
        b_pos / POS_SCALE,
        b_vel / BALL_SPEED_SCALE,
        np.linalg.norm(b_vel, axis=1, keepdims=True) / BALL_SPEED_SCALE,
        pos / POS_SCALE,
        vel / CAR_SPEED_SCALE,
        np.linalg.norm(vel, axis=1, keepdims=True) / CAR_SPEED_SCALE,
        me[:, [PLAYER_FIELD["boost"], PLAYER_FIELD["jumping"], PLAYER_FIELD["demolished"]]],
        (pos[:, 2:3] < ON_GROUND_MAX_Z).astype(np.float32),
        np.stack([np.cos(yaw), np.sin(yaw), pitch], axis=1),
        to_ball / POS_SCALE,
        ball_dist[:, None] / POS_SCALE,
        rel_vel / BALL_SPEED_SCALE,
        closing[:, None] / CAR_SPEED_SCALE,
        (pos[:, 0:2] - own_goal[None, 0:2]) / POS_SCALE,
        np.linalg.norm(pos - own_goal, axis=1, keepdims=True) / POS_SCALE,
        np.linalg.norm(pos - opp_goal, axis=1, keepdims=True) / POS_SCALE,
        np.linalg.norm(b_pos - own_goal, axis=1, keepdims=True) / POS_SCALE,
        np.linalg.norm(b_pos - opp_goal, axis=1, keepdims=True) / POS_SCALE,
        _slots(view[:, mates], pos, all_dist[:, mates], TEAMMATE_SLOTS),
        _slots(view[:, opponents], pos, all_dist[:, opponents], OPPONENT_SLOTS),
        (parsed.seconds_remaining[:, None] / MATCH_SECONDS),
        np.full((len(pos), 1), parsed.team_size / 4.0),
        (np.argmin(team_dist, axis=1) == p)[:, None],
        np.isin(np.argmin(all_dist, axis=1), np.flatnonzero(teams == teams[p]))[:, None],
        (np.sum(view[:, mates, 1] < b_pos[:, 1:2], axis=1) / max(1, TEAMMATE_SLOTS))[:, None],
    ]
    return np.concatenate([np.asarray(c, dtype=np.float32) for c in columns], axis=1)


def _slots(others: np.ndarray, pos: np.ndarray, dist: np.ndarray, slots: int) -> np.ndarray:
    """Other cars nearest the ball first, padded with zeros (present=0) to ``slots``."""
    n_frames = pos.shape[0]
    out = np.zeros((n_frames, slots, len(_OTHER_FIELDS)), dtype=np.float32)
    if others.shape[1] == 0:
        return out.reshape(n_frames, -1)
    order = np.argsort(dist, axis=1)[:, :slots]
    chosen = np.take_along_axis(others, order[:, :, None], axis=1)
    chosen_dist = np.take_along_axis(dist, order, axis=1)
    taken = chosen.shape[1]
    out[:, :taken, 0] = 1.0
    out[:, :taken, 1:4] = (chosen[:, :, 0:3] - pos[:, None, :]) / POS_SCALE
    out[:, :taken, 4:6] = chosen[:, :, 6:8] / CAR_SPEED_SCALE
    out[:, :taken, 6] = chosen[:, :, PLAYER_FIELD["boost"]]
    out[:, :taken, 7] = chosen_dist / POS_SCALE
    return out.reshape(n_frames, -1)
