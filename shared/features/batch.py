"""The batch featurizer: a parsed replay's feature table, with its replay-borne labels
(shared/features/labels.py)."""

from __future__ import annotations

import numpy as np

from shared.features.context import game_context
from shared.features.labels import replay_labels
from shared.features.rows import feature_rows
from shared.features.table import FeatureTable
from shared.frames import ParsedReplay


def featurize(parsed: ParsedReplay, horizon_seconds: float = 10.0) -> FeatureTable:
    context = game_context(parsed)
    features = feature_rows(parsed, context, np.arange(parsed.n_frames))
    label_score, label_concede = replay_labels(parsed, horizon_seconds)
    return FeatureTable(
        replay_id=parsed.replay_id,
        time=parsed.time,
        segment=context.goals_for.sum(axis=1),
        live=context.live,
        features=features,
        label_score=label_score,
        label_concede=label_concede,
        touched=context.touched,
        players=parsed.players,
        goals=parsed.goals,
        map_name=parsed.map_name,
        game_mode=parsed.game_mode,
        label_horizon_seconds=horizon_seconds,
    )
