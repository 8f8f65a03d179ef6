from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.featurizer.dataset import FeatureSchemaError, read_features, write_features
from services.featurizer.features import (
    FEATURE_NAMES,
    N_FEATURES,
    FeatureTable,
    featurize,
    goal_within,
)
from services.parser.parse import parse_replay_file
from shared.events import GoalInfo

COLUMN = {name: i for i, name in enumerate(FEATURE_NAMES)}


@pytest.fixture(scope="module")
def table(standard_replay) -> FeatureTable:
    parsed = parse_replay_file(standard_replay.path, standard_replay.sha256)
    return featurize(parsed, horizon_seconds=10.0)


def test_shape_and_finite(table: FeatureTable):
    assert N_FEATURES >= 75
    assert table.features.shape[1:] == (len(table.players), N_FEATURES)
    assert np.isfinite(table.features).all()


def test_every_player_defends_minus_y_after_mirroring(table: FeatureTable):
    """At the first kickoff each car stands in its own half: with mirroring that is y < 0."""
    kickoff = table.features[0]
    assert (kickoff[:, COLUMN["y"]] < 0).all()
    assert (kickoff[:, COLUMN["own_goal_dist"]] < kickoff[:, COLUMN["opp_goal_dist"]]).all()


def test_labels_mark_the_seconds_before_each_goal(standard_replay):
    parsed = parse_replay_file(standard_replay.path, standard_replay.sha256)
    table = featurize(parsed, horizon_seconds=10.0)
    goal = parsed.goals[0]
    before = np.flatnonzero((parsed.time < goal.time) & (parsed.time > goal.time - 9.5))
    long_before = np.flatnonzero(parsed.time < goal.time - 10.5)
    for player in parsed.players:
        scored = player.team == goal.team
        assert table.label_score[before, player.index].all() == scored
        assert table.label_concede[before, player.index].all() == (not scored)
        assert not table.label_score[long_before, player.index].any()  # no earlier goal
    assert table.segment[before[-1]] == 0 and table.segment[-1] == len(parsed.goals)


def test_goal_within_horizon_is_half_open():
    time = np.array([0.0, 5.0, 10.0, 15.0])
    labels = goal_within(time, [GoalInfo(time=15.0, team=1)], horizon=10.0)
    assert labels[:, 0].tolist() == [False, False, False, False]
    assert labels[:, 1].tolist() == [False, True, True, False]


def test_parquet_round_trip_keeps_everything(table: FeatureTable, tmp_path: Path):
    write_features(table, tmp_path / "f.parquet")
    loaded = read_features(tmp_path / "f.parquet")
    assert loaded.players == table.players and loaded.replay_id == table.replay_id
    np.testing.assert_array_equal(loaded.features, table.features)
    np.testing.assert_array_equal(loaded.label_score, table.label_score)
    np.testing.assert_array_equal(loaded.segment, table.segment)


def test_reading_another_schema_version_fails_clearly(table: FeatureTable, tmp_path: Path):
    import pyarrow.parquet as pq

    from services.featurizer.dataset import SCHEMA_VERSION_KEY, to_arrow

    arrow = to_arrow(table)
    metadata = {**arrow.schema.metadata, SCHEMA_VERSION_KEY: b"999"}
    pq.write_table(arrow.replace_schema_metadata(metadata), tmp_path / "old.parquet")
    with pytest.raises(FeatureSchemaError, match="v999"):
        read_features(tmp_path / "old.parquet")
