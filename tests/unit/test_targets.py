"""The impact network's training targets on a real replay: the forecast pair and the
auxiliary targets (other horizons, the ball ahead, touches within a window)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from services.parser.parse import parse_replay_file
from services.trainer.data import stack_rows
from services.trainer.targets import BALL_Y, NO_AUX, AuxTargets, training_targets
from shared.features.batch import featurize
from shared.features.table import FeatureTable


@pytest.fixture(scope="module")
def table(standard_replay) -> FeatureTable:
    return featurize(parse_replay_file(standard_replay.path, standard_replay.sha256))


@pytest.fixture(scope="module")
def live(table: FeatureTable) -> np.ndarray:
    return np.flatnonzero(table.live)


def _targets(table: FeatureTable, frames: np.ndarray, **aux: tuple[float, ...]) -> np.ndarray:
    """[F, P, columns] for ``frames``: one column per target of NO_AUX + ``aux``."""
    targets = training_targets(table, frames, replace(NO_AUX, **aux))
    return targets.reshape(len(frames), len(table.players), -1)


def test_the_default_targets_are_the_rows_of_the_training_set(table: FeatureTable):
    aux = AuxTargets()
    features, targets = stack_rows([table], aux=aux)
    assert targets.shape == (len(features), 2 + aux.width)
    assert targets.dtype == np.float32 and targets.min() >= 0 and targets.max() <= 1
    assert np.isfinite(targets).all()


def test_auxiliary_horizons_are_the_same_events_over_other_horizons(table, live):
    # the table's own horizon is 10 s: that auxiliary pair repeats the forecast pair
    targets = _targets(table, live, horizons=(10.0, 2.0, 20.0)).reshape(-1, 8)
    assert targets[:, 0].any()
    np.testing.assert_array_equal(targets[:, 2:4], targets[:, 0:2])
    short, long = targets[:, 4:6], targets[:, 6:8]
    assert (short <= targets[:, 0:2]).all() and (targets[:, 0:2] <= long).all()
    assert short.sum() < targets[:, 0:2].sum() < long.sum()


def test_the_ball_ahead_by_nothing_is_where_the_ball_is(table, live):
    now = _targets(table, live, ball_leads=(0.0,))[:, :, 2]
    np.testing.assert_allclose(now, np.clip((table.features[live, :, BALL_Y] + 1) / 2, 0, 1))


def test_both_teams_see_the_ball_ahead_from_their_own_side(table, live):
    ahead = _targets(table, live, ball_leads=(1.0, 4.0))[:, :, 2:]
    teams = np.array([p.team for p in table.players])
    blue, orange = ahead[:, teams == 0], ahead[:, teams == 1]
    np.testing.assert_allclose(blue + orange, 1.0, atol=1e-6)
    assert 0.2 < blue.mean() < 0.8 and blue.std() > 0.1


def test_a_goal_ahead_puts_the_ball_in_the_net_it_went_into(table, live):
    teams = np.array([p.team for p in table.players])
    for goal in table.goals:
        before = live[(table.time[live] < goal.time) & (table.time[live] >= goal.time - 2.0)]
        ahead = _targets(table, before, ball_leads=(3.0,))[:, :, 2]
        np.testing.assert_array_equal(ahead, np.broadcast_to(teams == goal.team, ahead.shape))


def test_touches_within_a_window_stop_at_the_next_goal(table, live):
    teams = np.array([p.team for p in table.players])
    touched = _targets(table, live, touch_windows=(0.01, 1.0, 5.0, 60.0))[:, :, 2:]
    assert not touched[:, :, 0:2].any()  # no frame follows within 0.01 s
    one, five = touched[:, :, 2:4], touched[:, :, 4:6]
    assert one.any() and (one <= five).all() and one.sum() < five.sum()
    for goal in table.goals:
        last = live[table.time[live] < goal.time][-1]
        after = (table.time > table.time[last]) & (table.time <= goal.time)
        for player, team in enumerate(teams):
            expected = table.touched[after][:, teams == team].any()
            within = _targets(table, np.array([last]), touch_windows=(60.0,))[0, player, 2]
            assert within == expected
