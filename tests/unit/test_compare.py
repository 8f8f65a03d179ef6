"""Cross-validation of the training recipe against the baseline's: folds by file, every replay
held out once and never trained or stopped on, forecasts pooled; the crossval command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.cli import main
from services.parser.parse import parse_replay_file
from services.trainer.compare import (
    BASELINE,
    MODEL,
    baseline_config,
    cross_validate,
    fold_splits,
    out_of_fold_models,
    replay_folds,
)
from services.trainer.config import TrainConfig
from services.trainer.data import scoped_tables
from services.trainer.evaluate import TeamForecasts
from shared.features.batch import featurize
from shared.features.table import FeatureTable

pytestmark = pytest.mark.usefixtures("torch_one_thread")

QUICK = TrainConfig(batch_size=4096).with_fit(epochs=1, milestone_every=0)


@pytest.fixture(scope="module")
def rows(good_replays):
    """2v2 replays with goals, of Soccar on standard arenas and of other modes or arenas."""
    return [r for r in good_replays if (r.goals or 0) >= 3 and r.team_size == 2][:8]


@pytest.fixture(scope="module")
def tables(rows) -> list[FeatureTable]:
    return [featurize(parse_replay_file(r.path, r.sha256)) for r in rows]


def _forecasts(replays: list[int]) -> TeamForecasts:
    n = len(replays)
    flags = np.arange(n) % 2 == 0
    return TeamForecasts(np.linspace(0, 1, n), np.zeros(n), flags, ~flags, np.array(replays))


def test_concatenated_forecasts_keep_every_part_s_replays_apart():
    parts = [_forecasts([0, 0, 1]), _forecasts([]), _forecasts([0, 1, 1, 2])]
    joined = TeamForecasts.concat(parts)
    assert joined.replay.tolist() == [0, 0, 1, 2, 3, 3, 4]
    assert joined.p_score.tolist() == [*parts[0].p_score, *parts[2].p_score]
    assert joined.scored.tolist() == [*parts[0].scored, *parts[2].scored]


def test_folds_deal_every_replay_once_whatever_the_order(tables):
    folds = replay_folds(tables, 3, seed=0)
    ids = [[t.replay_id for t in fold] for fold in folds]
    assert sorted(i for fold in ids for i in fold) == sorted(t.replay_id for t in tables)
    assert sorted(len(fold) for fold in folds) == [2, 3, 3]  # 8 replays
    assert [[t.replay_id for t in f] for f in replay_folds(tables[::-1], 3, 0)] == ids
    assert [[t.replay_id for t in f] for f in replay_folds(tables, 3, 1)] != ids
    for folds_asked in (1, len(tables) + 1):
        with pytest.raises(ValueError, match="folds"):
            replay_folds(tables, folds_asked, seed=0)


def test_each_replay_is_held_out_once_and_never_trained_or_stopped_on(tables):
    scoped, other = scoped_tables(tables)
    assert len(scoped) >= 4 and other, "the test needs 4 Soccar replays and one of another mode"
    heard = []
    baseline = baseline_config(epochs=1, seed=0, val_fraction=0.2)
    result = cross_validate(tables, QUICK, baseline, folds=2, on_fold=heard.append)
    assert heard == result.folds and len(result.folds) == 2
    assert result.out_of_scope == sorted(t.replay_id for t in other)
    held = [i for fold in result.folds for i in fold.held_out]
    assert sorted(held) == sorted(t.replay_id for t in scoped)
    for fold in result.folds:
        assert not set(fold.held_out) & set(fold.trained_on + fold.stopped_on)
        assert fold.trained_on and fold.stopped_on
        assert not set(fold.trained_on) & set(fold.stopped_on)
    pooled = result.pooled
    for name in (MODEL, BASELINE):
        per_fold = [fold.results[name] for fold in result.folds]
        assert len(pooled[name].scored) == sum(len(f.scored) for f in per_fold)
        assert len(np.unique(pooled[name].replay)) == len(scoped)
        assert np.array_equal(pooled[name].scored, pooled[MODEL].scored)
    assert not np.array_equal(pooled[MODEL].p_score, pooled[BASELINE].p_score)


def test_a_share_of_the_training_replays_trains_on_fewer_and_holds_out_the_same(tables):
    baseline = baseline_config(epochs=1, seed=0, val_fraction=0.2)
    whole = cross_validate(tables, QUICK, baseline, folds=4)  # small folds: 2+ to train on
    half = cross_validate(tables, QUICK, baseline, folds=4, train_share=0.5)
    for all_of, part in zip(whole.folds, half.folds, strict=True):
        assert part.held_out == all_of.held_out and part.stopped_on == all_of.stopped_on
        assert len(part.trained_on) == max(1, round(len(all_of.trained_on) / 2))
        assert set(part.trained_on) <= set(all_of.trained_on)
    assert sum(len(f.trained_on) for f in half.folds) < sum(len(f.trained_on) for f in whole.folds)
    for share in (0.0, 1.5):
        with pytest.raises(ValueError, match="share"):
            cross_validate(tables, QUICK, baseline, folds=2, train_share=share)


def test_crossval_prints_each_fold_and_the_pooled_report(rows, tables, tmp_path, capsys):
    replays = tmp_path / "replays"
    replays.mkdir()
    for row in rows:  # a folder of links: the replays themselves stay where they are
        (replays / row.path.name).symlink_to(row.path)
    out = tmp_path / "cv"
    argv = ["crossval", str(replays), "--folds", "2", "--epochs", "1", "--out", str(out)]
    assert main([*argv, "--baseline-epochs", "1"]) == 0
    printed = capsys.readouterr().out
    scoped, _ = scoped_tables(tables)
    assert f"2-fold cross-validation of {len(scoped)} Soccar replays" in printed
    assert "fold 1:" in printed and "fold 2:" in printed and "fold 3:" not in printed
    assert "P(score)     model" in printed and "P(score) ROC AUC, model - ball-only:" in printed
    summary = json.loads((out / "crossval.json").read_text())
    held = sorted(i for fold in summary["folds"] for i in fold["held_out_replays"])
    assert held == sorted(t.replay_id for t in scoped)
    low, high = summary["roc_auc_intervals"]["score"]["model"]
    assert low - 1e-9 <= summary["metrics"]["model"]["score"]["roc_auc"] <= high + 1e-9


def test_crossval_refuses_more_folds_than_replays(rows, tmp_path):
    replays = tmp_path / "replays"
    replays.mkdir()
    (replays / rows[0].path.name).symlink_to(rows[0].path)
    with pytest.raises(SystemExit, match="folds"):
        main(["crossval", str(replays), "--folds", "5", "--out", str(tmp_path / "cv")])


@pytest.mark.parametrize("option", [["--val-fraction", "1"], ["--val-fraction", "0"]])
def test_crossval_refuses_a_share_that_is_not_between_0_and_1(option, capsys):
    with pytest.raises(SystemExit):
        main(["crossval", *option])
    assert "must be between 0 and 1" in capsys.readouterr().err


def test_an_impact_model_of_no_networks_is_refused_by_the_config_and_the_commands(tmp_path):
    with pytest.raises(ValueError, match="at least one member"):
        TrainConfig(members=0)
    for command in (["crossval"], ["train", "--local", str(tmp_path)]):
        with pytest.raises(SystemExit, match="--members: an impact model needs at least one"):
            main([*command, "--members", "0"])


def test_out_of_fold_models_forecast_each_replay_with_a_model_that_never_saw_it(tables):
    scoped, other = scoped_tables(tables)
    heard = []
    models = out_of_fold_models(tables, QUICK, folds=2, on_fold=lambda: heard.append(1))
    assert len(heard) == 2 and set(models) == {t.replay_id for t in scoped}
    assert not set(models) & {t.replay_id for t in other}
    assert len({id(m) for m in models.values()}) == 2
    splits = list(fold_splits(scoped, 2, QUICK))
    for held_out, train, val in splits:
        (model,) = {id(models[t.replay_id]) for t in held_out}
        trained_here = {t.replay_id for t in train + val}
        assert not trained_here & {t.replay_id for t in held_out}
        others = {id(models[i]) for i in trained_here}
        assert model not in others  # each replay it trained on is forecast by the other model
    rows = scoped[0].features[:50].reshape(-1, scoped[0].features.shape[-1])
    assert models[scoped[0].replay_id].predict(rows).shape == (len(rows), 2)
