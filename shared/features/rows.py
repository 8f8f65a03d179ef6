"""The feature rows of frames: each player's view of the ball, itself, its teammates and
opponents, its team and the segment's recent past, in ``FEATURE_NAMES`` order
(``blocks.py``: the blocks that compute them from what is gathered here). Pure numpy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from shared.features.blocks import (
    BALL_POS,
    BALL_VEL,
    CAR_POS,
    CAR_VEL,
    FEATURE_BLOCKS,
    N_FEATURES,
    RowView,
)
from shared.features.context import GameContext, vector_length
from shared.features.scales import (
    GOAL_Y,
    ON_GROUND_MAX_Z,
    SIDE_WALL_X,
    WALL_MARGIN,
)
from shared.frames import BALL_FIELD, PLAYER_FIELD, ParsedReplay


def feature_rows(parsed: ParsedReplay, context: GameContext, rows: np.ndarray) -> np.ndarray:
    """[len(rows), P, N_FEATURES] float32: the features of the frames ``rows``; the features
    of the recent past read the frames before them. Costs in proportion to ``len(rows)``."""
    teams = np.array([player.team for player in parsed.players])
    orientation = _orientation(tuple(teams.tolist()))
    ball, cars = _oriented(parsed.ball[rows], parsed.cars[rows], orientation)
    groups = orientation.groups
    if len(groups) == 1:  # even teams: every player in one pass, in column order
        return _players_block(ball, cars, parsed, teams, groups[0], context, rows)
    result = np.zeros((rows.shape[0], teams.shape[0], N_FEATURES), dtype=np.float32)
    for group in groups:
        result[:, group] = _players_block(ball, cars, parsed, teams, group, context, rows)
    return result


@dataclass(frozen=True)
class _Orientation:
    """For a team layout: the signs that turn the pitch round for team 1's viewers ([P, 6] for
    the ball, [P, 1, F] for the cars; 1 for team 0), the yaw they add ([P, 1], float64: as the
    in-place add always did), and the players with as many teammates, group by group."""

    ball_sign: np.ndarray
    car_sign: np.ndarray
    yaw_turn: np.ndarray
    groups: tuple[np.ndarray, ...]


@functools.cache
def _orientation(teams: tuple[int, ...]) -> _Orientation:
    team = np.array(teams)
    sign = np.where(team == 0, 1.0, -1.0).astype(np.float32)  # [P]
    ball_sign = np.ones((team.shape[0], len(BALL_FIELD)), dtype=np.float32)
    car_sign = np.ones((team.shape[0], 1, len(PLAYER_FIELD)), dtype=np.float32)
    for axis in ("x", "y", "vx", "vy"):
        ball_sign[:, BALL_FIELD[axis]] = sign
        car_sign[:, 0, PLAYER_FIELD[axis]] = sign
    # players with as many teammates (all of them when the teams are even) go in one pass
    sizes = np.bincount(team, minlength=2)[team]
    groups = tuple(np.flatnonzero(sizes == size) for size in np.unique(sizes))
    orientation = _Orientation(
        ball_sign, car_sign, np.where(team == 0, 0.0, np.pi)[:, None], groups
    )
    for array in (ball_sign, car_sign, orientation.yaw_turn, *groups):
        array.flags.writeable = False  # shared by every call with this layout
    return orientation


def _oriented(
    ball: np.ndarray, cars: np.ndarray, orientation: _Orientation
) -> tuple[np.ndarray, np.ndarray]:
    """Ball [T, P, 6] and cars [T, P(viewer), P, F] as seen by each viewer's team (a sign
    flip is exact, so one multiplication by the layout's signs gives each view)."""
    ball_view = ball[:, None, :] * orientation.ball_sign
    cars_view = cars[:, None, :, :] * orientation.car_sign
    cars_view[:, :, :, PLAYER_FIELD["yaw"]] += orientation.yaw_turn
    return ball_view, cars_view


def _players_block(
    ball: np.ndarray,
    view: np.ndarray,
    parsed: ParsedReplay,
    teams: np.ndarray,
    group: np.ndarray,
    context: GameContext,
    rows: np.ndarray,
) -> np.ndarray:
    """[R, G, N_FEATURES] for the players ``group`` at frames ``rows``, in one pass; ``ball``
    [R, P, 6] and ``view`` [R, P, P, F] of those frames in each viewer's frame. The players of
    a group have as many teammates (and opponents) as each other: every (frame, player) pair
    is one row of the same per-player computation."""
    n_rows, size, n_players = rows.shape[0], group.shape[0], teams.shape[0]
    viewer, frame, every = _row_indices(tuple(group.tolist()), n_rows)
    row_team = teams[viewer]
    whole = size == n_players  # the group is every player, in column order
    by_viewer = view if whole else view[:, group]  # [R, G, P, F]
    seen = by_viewer.reshape(n_rows * size, n_players, -1)  # [R', P, F] in viewer's frame
    member = np.arange(size)[:, None]  # [G, 1]: with [G, k] columns, picks k cars per viewer

    def cars_of(columns: np.ndarray) -> np.ndarray:  # [R', k, F]
        shape = (n_rows * size, columns.shape[1], by_viewer.shape[-1])
        return by_viewer[:, member, columns].reshape(shape)

    def dist_of(dist: np.ndarray, columns: np.ndarray) -> np.ndarray:  # [R', k]
        return dist.reshape(n_rows, size, n_players)[:, member, columns].reshape(
            n_rows * size, columns.shape[1]
        )

    me = seen[every, viewer]
    b = (ball if whole else ball[:, group]).reshape(n_rows * size, -1)
    b_pos, b_vel = b[:, BALL_POS], b[:, BALL_VEL]
    pos, vel = me[:, CAR_POS], me[:, CAR_VEL]
    to_ball = b_pos - pos
    ball_dist = vector_length(to_ball, axis=1)
    rel_vel = b_vel - vel
    closing = -np.sum(rel_vel * to_ball, axis=1) / np.maximum(ball_dist, 1.0)
    own_goal = np.array([0.0, -GOAL_Y, 0.0], dtype=np.float32)
    opp_goal = -own_goal
    yaw, pitch = me[:, PLAYER_FIELD["yaw"]], me[:, PLAYER_FIELD["pitch"]]
    same, mates_of, opps_of, team_of = _layout(tuple(teams.tolist()), tuple(group.tolist()))
    team, opponents = same[viewer], ~same[viewer]  # [R', P]
    mates_cars, opps_cars, team_cars = cars_of(mates_of), cars_of(opps_of), cars_of(team_of)
    all_dist = vector_length(seen[:, :, CAR_POS] - b_pos[:, None, :], axis=2)  # [R', P]
    absent = seen[:, :, PLAYER_FIELD["demolished"]] > 0.5
    live_dist = np.where(absent, np.inf, all_dist)
    team_dist = np.where(team, live_dist, np.inf)
    opp_dist = np.where(opponents, live_dist, np.inf)
    mates_dist, opps_dist = dist_of(live_dist, mates_of), dist_of(live_dist, opps_of)
    on_ground = pos[:, 2:3] < ON_GROUND_MAX_Z  # z
    near_wall = (np.abs(pos[:, 0:1]) > SIDE_WALL_X - WALL_MARGIN) | (
        np.abs(pos[:, 1:2]) > GOAL_Y - WALL_MARGIN
    )
    frame_rows = rows[frame]
    toucher = context.last_toucher[frame_rows]
    possession = np.where(toucher < 0, 0.0, np.where(teams[toucher] == row_team, 1.0, -1.0))
    goals_for = context.goals_for[frame_rows]
    scored, conceded = goals_for[every, row_team], goals_for[every, 1 - row_team]
    row_view = RowView(
        parsed, context, rows, teams, viewer, frame, row_team, frame_rows, me, b_pos, b_vel,
        pos, vel, to_ball, ball_dist, rel_vel, closing, own_goal, opp_goal, yaw, pitch, opps_of,
        mates_cars, opps_cars, team_cars, team_dist, opp_dist, mates_dist, opps_dist, on_ground,
        near_wall, toucher, possession, scored, conceded,
    )  # fmt: skip
    columns = [values for block in FEATURE_BLOCKS for values in block.values(row_view)]
    # each column cast to float32 as it is copied in (the value astype gives)
    out = np.concatenate(columns, axis=1, dtype=np.float32, casting="unsafe")
    return out.reshape(n_rows, size, N_FEATURES)


SMALL_CALL_ROWS = 64  # the live path's calls: their index arrays are kept


def _row_indices(group: tuple[int, ...], n_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[R'] the player each row is about (R' = R * G), [R'] its frame's position in ``rows``,
    and [R'] 0..R'-1; kept for the few small shapes of the live path's calls."""
    if n_rows <= SMALL_CALL_ROWS:
        return _small_row_indices(group, n_rows)
    return _make_row_indices(group, n_rows)


def _make_row_indices(
    group: tuple[int, ...], n_rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    size = len(group)
    return (
        np.tile(np.array(group, dtype=np.int64), n_rows),
        np.repeat(np.arange(n_rows), size),
        np.arange(n_rows * size),
    )


@functools.lru_cache(maxsize=256)
def _small_row_indices(
    group: tuple[int, ...], n_rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    indices = _make_row_indices(group, n_rows)
    for array in indices:
        array.flags.writeable = False  # shared by every call of this shape
    return indices


@functools.cache
def _layout(
    teams: tuple[int, ...], group: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For a team layout: [P, P] same team; and for each player of ``group`` its teammates
    [G, m], opponents and team (itself included) by column. Few layouts ever occur."""
    team = np.array(teams)
    index = np.arange(team.shape[0])
    same = team[:, None] == team[None, :]
    mates_of = np.stack([np.flatnonzero(same[p] & (index != p)) for p in group])
    opps_of = np.stack([np.flatnonzero(~same[p]) for p in group])
    team_of = np.stack([np.flatnonzero(same[p]) for p in group])
    for array in (same, mates_of, opps_of, team_of):
        array.flags.writeable = False  # shared by every call with this layout
    return same, mates_of, opps_of, team_of
