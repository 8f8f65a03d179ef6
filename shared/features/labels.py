"""Replay-borne labels: does a player's team score, or concede, within a horizon. The batch
featurizer writes them with the table (the trainer reads them, and computes its auxiliary
targets with the same :func:`goal_within`); the live path has no future and fills zeros."""

from __future__ import annotations

import numpy as np

from shared.events import GoalInfo
from shared.frames import ParsedReplay


def replay_labels(parsed: ParsedReplay, horizon_seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """[T, P] bool each: the player's team scores / concedes in (t, t + horizon]."""
    teams = np.array([player.team for player in parsed.players])
    scored = goal_within(parsed.time, parsed.goals, horizon_seconds)  # [T, 2] by team
    return scored[:, teams], scored[:, 1 - teams]


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
