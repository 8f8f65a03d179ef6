"""What the impact network is trained to predict, per (live frame, player) row. Pure numpy.

The forecast pair is P(the player's team scores) and P(it concedes) within the table's horizon.
Goals are rare, though: a few hundred in the training replays, so the network learns little
about what leads to them from the pair alone. Auxiliary targets, read from the same replays,
give it that denser signal; they shape the shared hidden layers, and are neither exported nor
used to forecast:

- the same pair within other horizons;
- where the ball will be: its y seen from the player's side (0 on the own goal line, 1 on the
  other), some seconds ahead; when a goal comes first, the line of the goal it went into;
- whether the player's team, and whether the other team, touches the ball within some seconds
  (touches after the next goal do not count).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.features.labels import goal_within
from shared.features.table import FEATURE_NAMES, FeatureTable

BALL_Y = FEATURE_NAMES.index("ball_y")  # the ball's y / GOAL_Y, from the row player's side


@dataclass(frozen=True)
class AuxTargets:
    horizons: tuple[float, ...] = (2.0, 5.0, 20.0)  # s: score / concede within these too
    ball_leads: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0)  # s ahead
    touch_windows: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0)  # s: each team touches within

    @property
    def width(self) -> int:
        return 2 * len(self.horizons) + len(self.ball_leads) + 2 * len(self.touch_windows)


NO_AUX = AuxTargets(horizons=(), ball_leads=(), touch_windows=())


def training_targets(table: FeatureTable, frames: np.ndarray, aux: AuxTargets) -> np.ndarray:
    """[len(frames) * P, 2 + aux.width] float32 in [0, 1], rows in the order of
    ``table.features[frames].reshape(-1, N)``: the forecast pair (score, concede), then each
    horizon's pair, each lead's ball position, each window's pair (own team, other team)."""
    teams = np.array([p.team for p in table.players])
    time = table.time[frames]
    columns = [table.label_score[frames], table.label_concede[frames]]
    for horizon in aux.horizons:
        scored = goal_within(time, table.goals, horizon)  # [F, 2] by team
        columns += [scored[:, teams], scored[:, 1 - teams]]
    next_goal_time, next_goal_team = _next_goal(table, time)
    for lead in aux.ball_leads:
        columns.append(_ball_ahead(table, frames, lead, next_goal_time, next_goal_team, teams))
    touches_so_far = _team_touches_so_far(table, teams)
    for window in aux.touch_windows:
        touched = _team_touches_within(table, frames, window, next_goal_time, touches_so_far)
        columns += [touched[:, teams], touched[:, 1 - teams]]
    return np.stack([np.reshape(c, -1) for c in columns], axis=1).astype(np.float32)


def _next_goal(table: FeatureTable, time: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[F] time of the first goal after each time (inf: none) and the team that scores it."""
    goals = sorted(table.goals, key=lambda g: g.time)
    goal_times = np.array([g.time for g in goals] + [np.inf])
    goal_teams = np.array([g.team for g in goals] + [-1])
    index = np.searchsorted(goal_times, time, side="right")
    return goal_times[index], goal_teams[index]


def _frame_at(table: FeatureTable, time: np.ndarray) -> np.ndarray:
    """Index of the last frame at or before each time (the replay's last one past its end)."""
    return np.maximum(np.searchsorted(table.time, time, side="right") - 1, 0)


def _ball_ahead(
    table: FeatureTable,
    frames: np.ndarray,
    lead: float,
    next_goal_time: np.ndarray,
    next_goal_team: np.ndarray,
    teams: np.ndarray,
) -> np.ndarray:
    """[F, P] the ball's y ``lead`` seconds ahead in [0, 1] from each player's side."""
    ahead = table.time[frames] + lead
    ball_y = table.features[_frame_at(table, ahead), :, BALL_Y]
    position = np.clip((ball_y + 1.0) / 2.0, 0.0, 1.0)
    goal_first = (next_goal_time <= ahead)[:, None]
    scored = next_goal_team[:, None] == teams[None, :]
    return np.where(goal_first, scored, position)


def _team_touches_so_far(table: FeatureTable, teams: np.ndarray) -> np.ndarray:
    """[T + 1, 2]: row i counts the frames before frame i in which team k touched the ball."""
    by_team = np.stack([table.touched[:, teams == k].any(axis=1) for k in (0, 1)], axis=1)
    return np.concatenate([np.zeros((1, 2)), np.cumsum(by_team, axis=0)])


def _team_touches_within(
    table: FeatureTable,
    frames: np.ndarray,
    window: float,
    next_goal_time: np.ndarray,
    so_far: np.ndarray,
) -> np.ndarray:
    """[F, 2] bool: team k touches the ball in (t, t + window], and before the next goal."""
    end_time = np.minimum(table.time[frames] + window, next_goal_time)
    last = np.maximum(_frame_at(table, end_time), frames)
    return so_far[last + 1] - so_far[frames + 1] > 0
