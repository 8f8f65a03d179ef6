from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from services.parser.parse import parse_replay_file
from shared.events import GoalInfo
from shared.features.batch import featurize
from shared.features.context import live_frames
from shared.features.dataset import (
    FeatureSchemaError,
    StaleLabelsError,
    check_label_horizon,
    read_features,
    write_features,
)
from shared.features.labels import goal_within
from shared.features.table import FEATURE_NAMES, MIRROR_SIGNS, N_FEATURES, FeatureTable
from shared.frames import BALL_FIELD, PLAYER_FIELD, ParsedReplay

COLUMN = {name: i for i, name in enumerate(FEATURE_NAMES)}
TEAM_LEVEL = (
    "ball_own_goal_dist", "ball_opp_goal_dist", "ball_v_to_opp_goal", "possession",
    "mates_goal_side", "opps_goal_side", "team_min_goal_dist", "opp_min_goal_dist",
    "since_touch", "score_diff", "ball_y_mean_10s", "team_touches_5s",
)  # fmt: skip


@pytest.fixture(scope="module")
def parsed(standard_replay) -> ParsedReplay:
    return parse_replay_file(standard_replay.path, standard_replay.sha256)


@pytest.fixture(scope="module")
def table(parsed: ParsedReplay) -> FeatureTable:
    return featurize(parsed, horizon_seconds=10.0)


def test_shape_and_finite(table: FeatureTable):
    assert N_FEATURES >= 75 and len(set(FEATURE_NAMES)) == N_FEATURES
    assert table.features.shape[1:] == (len(table.players), N_FEATURES)
    assert np.isfinite(table.features).all()


def test_every_player_defends_minus_y_after_mirroring(table: FeatureTable):
    """At the first kickoff each car stands in its own half: with mirroring that is y < 0."""
    kickoff = table.features[np.flatnonzero(table.live)[0]]
    assert (kickoff[:, COLUMN["y"]] < 0).all()
    assert (kickoff[:, COLUMN["own_goal_dist"]] < kickoff[:, COLUMN["opp_goal_dist"]]).all()


def _mirrored_left_right(parsed: ParsedReplay) -> ParsedReplay:
    """The same match played on the pitch mirrored in x: x and vx negate, headings reflect."""
    ball, cars = parsed.ball.copy(), parsed.cars.copy()
    ball[:, [BALL_FIELD["x"], BALL_FIELD["vx"]]] *= -1
    cars[:, :, [PLAYER_FIELD["x"], PLAYER_FIELD["vx"], PLAYER_FIELD["roll"]]] *= -1
    cars[:, :, PLAYER_FIELD["yaw"]] = np.pi - cars[:, :, PLAYER_FIELD["yaw"]]
    return replace(parsed, ball=ball, cars=cars)


def test_mirror_signs_say_how_every_feature_changes_when_the_pitch_is_mirrored(parsed, table):
    mirrored = featurize(_mirrored_left_right(parsed), horizon_seconds=10.0).features
    assert (MIRROR_SIGNS == -1).sum() >= 10
    np.testing.assert_allclose(mirrored, table.features * MIRROR_SIGNS, atol=1e-5)


def test_team_level_features_are_shared_by_teammates_and_mirrored_for_opponents(table):
    teams = np.array([p.team for p in table.players])
    blue, orange = np.flatnonzero(teams == 0), np.flatnonzero(teams == 1)
    for name in TEAM_LEVEL:
        column = table.features[:, :, COLUMN[name]]
        assert (column[:, blue] == column[:, blue[:1]]).all(), name
        assert (column[:, orange] == column[:, orange[:1]]).all(), name
    ball_y = table.features[:, :, COLUMN["ball_y"]]
    np.testing.assert_allclose(ball_y[:, blue[0]], -ball_y[:, orange[0]], atol=1e-6)
    possession = table.features[:, :, COLUMN["possession"]]
    np.testing.assert_array_equal(possession[:, blue[0]], -possession[:, orange[0]])


def test_labels_mark_the_seconds_before_each_goal(parsed: ParsedReplay, table: FeatureTable):
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


def test_play_stops_at_each_goal_and_resumes_at_the_next_kickoff(parsed, table):
    starts = np.flatnonzero(np.diff(table.live.astype(int)) == 1) + 1
    for goal in parsed.goals:
        at = int(np.searchsorted(parsed.time, goal.time))
        assert table.live[at - 1] and not table.live[at], "the goal ends the segment"
        later = starts[starts > at]
        if later.size:  # the next kickoff: the ball waits on its spot, then play goes on
            kickoff = later[0]
            assert parsed.time[kickoff] - goal.time > 3.0  # goal replay and countdown skipped
            ball = parsed.ball[kickoff]
            assert abs(ball[0]) < 1 and abs(ball[1]) < 1 and np.linalg.norm(ball[3:6]) < 1
    assert len(starts) + int(table.live[0]) >= len(parsed.goals)


def _ball(moves: list[bool]) -> np.ndarray:
    ball = np.zeros((len(moves), 6), dtype=np.float32)
    ball[:, 2] = 92.75
    ball[np.array(moves), 3] = 500.0
    return ball


def test_a_ball_put_back_on_its_spot_does_not_restart_play():
    """Synthetic: 2 s live, a goal, a 0.2 s jump of the ball as it is reset, a 3 s countdown."""
    moves = [True] * 20 + [False] * 10 + [True] * 2 + [False] * 30 + [True] * 20
    time = np.arange(len(moves)) * 0.1
    live = live_frames(time, _ball(moves), [GoalInfo(time=2.0, team=0)])
    assert live[:20].all() and not live[20:61].any()
    assert live[61:].all(), "the last still frame before the kickoff is the first live one"


def test_touches_come_from_the_parser_in_live_frames(parsed: ParsedReplay, table: FeatureTable):
    expected = {(int(f), int(p)) for f, p in parsed.touches if table.live[f]}
    touches = np.argwhere(table.touched)  # [K, 2] (frame, player), by frame
    assert expected and set(map(tuple, touches.tolist())) == expected
    frame, player = touches[len(touches) // 2]
    team = table.players[player].team
    after = table.features[frame]
    assert after[player, COLUMN["touched_last"]] == 1.0
    assert after[player, COLUMN["since_touch"]] == 0.0
    for other in table.players:
        assert after[other.index, COLUMN["possession"]] == (1.0 if other.team == team else -1.0)


def test_history_features_look_back_within_the_segment(table: FeatureTable):
    start = int(np.flatnonzero(np.diff(table.live.astype(int)) == 1)[0]) + 1
    column = table.features[:, 0, :]
    frame = start + 25  # 2.5 s into play at 10 fps
    assert column[frame, COLUMN["ball_y_1s"]] == column[frame - 10, COLUMN["ball_y"]]
    assert column[frame, COLUMN["ball_y_2s"]] == column[frame - 20, COLUMN["ball_y"]]
    early = start + 5  # the window stops at the kickoff
    assert column[early, COLUMN["ball_y_2s"]] == column[start, COLUMN["ball_y"]]


def test_parquet_round_trip_keeps_everything(table: FeatureTable, tmp_path: Path):
    write_features(table, tmp_path / "f.parquet")
    loaded = read_features(tmp_path / "f.parquet")
    assert loaded.players == table.players and loaded.replay_id == table.replay_id
    assert loaded.goals == table.goals and loaded.map_name == table.map_name is not None
    for name in ("features", "label_score", "segment", "live", "touched"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(table, name))


def test_a_file_records_its_label_horizon_and_stale_labels_are_refused(
    table: FeatureTable, tmp_path: Path
):
    write_features(table, tmp_path / "f.parquet")
    loaded = read_features(tmp_path / "f.parquet")
    assert loaded.label_horizon_seconds == table.label_horizon_seconds == 10.0
    check_label_horizon([loaded], 10.0)
    with pytest.raises(StaleLabelsError, match=r"\[10.0\] s ahead, not 5 s"):
        check_label_horizon([loaded], 5.0)
    unrecorded = replace(loaded, label_horizon_seconds=None)  # a file from before the record
    check_label_horizon([unrecorded], 5.0)


def test_reading_another_schema_version_fails_clearly(table: FeatureTable, tmp_path: Path):
    import pyarrow.parquet as pq

    from shared.features.dataset import SCHEMA_VERSION_KEY, to_arrow

    arrow = to_arrow(table)
    metadata = {**arrow.schema.metadata, SCHEMA_VERSION_KEY: b"999"}
    pq.write_table(arrow.replace_schema_metadata(metadata), tmp_path / "old.parquet")
    with pytest.raises(FeatureSchemaError, match="v999"):
        read_features(tmp_path / "old.parquet")


def test_a_window_of_a_replay_featurizes_like_a_replay(parsed: ParsedReplay):
    """The live scorer featurizes rolling windows: a slice must work on its own."""
    window = replace(
        parsed,
        time=parsed.time[1000:1100],
        seconds_remaining=parsed.seconds_remaining[1000:1100],
        ball=parsed.ball[1000:1100],
        cars=parsed.cars[1000:1100],
        goals=[],
        touches=np.zeros((0, 2), dtype=np.int32),
    )
    features = featurize(window).features
    assert features.shape == (100, len(parsed.players), N_FEATURES)
    assert np.isfinite(features).all()


def test_a_slice_of_a_table_keeps_its_fields_aligned(table: FeatureTable):
    part = table.frames(100, 250)
    assert part.features.shape[0] == part.live.shape[0] == part.touched.shape[0] == 150
    np.testing.assert_array_equal(part.touched, table.touched[100:250])
    np.testing.assert_array_equal(part.label_score, table.label_score[100:250])
