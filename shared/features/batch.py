"""The batch featurizer: a parsed replay's feature table, with its replay-borne labels."""

from __future__ import annotations

import numpy as np

from shared.events import GoalInfo
from shared.features.context import game_context
from shared.features.rows import feature_rows
from shared.features.table import FeatureTable
from shared.frames import ParsedReplay


def featurize(parsed: ParsedReplay, horizon_seconds: float = 10.0) -> FeatureTable:
    teams = np.array([player.team for player in parsed.players])
    context = game_context(parsed)
    features = feature_rows(parsed, context, np.arange(parsed.n_frames))
    scored = goal_within(parsed.time, parsed.goals, horizon_seconds)  # [T, 2] by team
    return FeatureTable(
        replay_id=parsed.replay_id,
        time=parsed.time,
        segment=context.goals_for.sum(axis=1),
        live=context.live,
        features=features,
        label_score=scored[:, teams],
        label_concede=scored[:, 1 - teams],
        touched=context.touched,
        players=parsed.players,
        goals=parsed.goals,
        map_name=parsed.map_name,
        game_mode=parsed.game_mode,
        label_horizon_seconds=horizon_seconds,
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
