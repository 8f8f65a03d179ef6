"""Metrics, held-out forecasts, plots, and the evaluate / dataset export commands end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from services.cli import main
from services.parser.parse import parse_replay_file
from services.trainer.config import TrainConfig
from services.trainer.evaluate import (
    TeamForecasts,
    binary_metrics,
    bootstrap_auc_intervals,
    calibration_curve,
    calibration_plot,
    roc_auc,
    table_forecasts,
    weighted_roc_auc,
)
from services.trainer.export import export_onnx
from services.trainer.train import train_impact_model
from shared.features.batch import featurize
from shared.features.dataset import SCHEMA_VERSION_KEY, read_features
from shared.features.table import FEATURE_SCHEMA_VERSION, FeatureTable
from shared.scope import in_scope

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def few(good_replays):
    return [r for r in good_replays if (r.goals or 0) >= 3 and r.team_size == 2][:3]


@pytest.fixture(scope="module")
def table(few) -> FeatureTable:
    return featurize(parse_replay_file(few[0].path, few[0].sha256))


def test_roc_auc_equals_pair_counting():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300).astype(float)
    scores = np.round(rng.random(300) + 0.3 * labels, 1)  # rounding makes ties
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert roc_auc(labels, scores) == pytest.approx(pairs / (len(pos) * len(neg)))


def test_weighted_roc_auc_counts_each_row_its_weight_times():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 200).astype(float)
    scores = np.round(rng.random(200) + 0.3 * labels, 1)
    ranked = np.unique(scores, return_inverse=True)[1]
    assert weighted_roc_auc(labels, ranked, np.ones(200)) == pytest.approx(roc_auc(labels, scores))
    weights = rng.integers(0, 4, 200)
    repeated = np.repeat(np.arange(200), weights)
    expected = roc_auc(labels[repeated], scores[repeated])
    assert weighted_roc_auc(labels, ranked, weights.astype(float)) == pytest.approx(expected)


def test_bootstrap_intervals_resample_replays_not_rows():
    rng = np.random.default_rng(6)
    labels = rng.random(4000) < 0.2
    informed = labels + rng.normal(0, 1.0, 4000)
    noise = rng.random(4000)
    scores = {"model": informed, "noise": noise}
    one_replay = bootstrap_auc_intervals(labels, scores, np.zeros(4000), rounds=50)
    point = roc_auc(labels, informed)  # one replay: every resample is the data itself
    assert one_replay["model"].low == pytest.approx(point)
    assert one_replay["model"].high == pytest.approx(point)
    many = bootstrap_auc_intervals(labels, scores, np.arange(4000) // 100, rounds=200)
    assert many["model"].low < point < many["model"].high
    assert many["noise"].low < 0.5 < many["noise"].high
    assert many["model - noise"].low > 0.1  # the informed forecast is better on every draw


def test_metrics_of_a_perfect_and_a_constant_forecast():
    labels = np.array([0.0, 1.0, 0.0, 1.0])
    perfect = binary_metrics(labels, labels)
    assert perfect["roc_auc"] == 1.0 and perfect["brier"] == pytest.approx(0.0, abs=1e-9)
    constant = binary_metrics(labels, np.full(4, 0.5))
    assert constant["log_loss"] == pytest.approx(np.log(2)) and constant["roc_auc"] == 0.5
    assert np.isnan(roc_auc(np.zeros(3), np.arange(3.0)))


def test_calibration_curve_of_a_calibrated_forecast_follows_the_diagonal():
    rng = np.random.default_rng(2)
    forecast = rng.random(200_000) * 0.5
    outcome = rng.random(forecast.size) < forecast
    mean, rate, count = calibration_curve(outcome.astype(float), forecast, bins=10)
    assert count.sum() == forecast.size and len(mean) == 10
    np.testing.assert_allclose(rate, mean, atol=0.01)


def test_forecasts_are_per_live_frame_and_team(table: FeatureTable):
    rng = np.random.default_rng(3)
    probabilities = rng.random((*table.features.shape[:2], 2))
    result = table_forecasts(table, probabilities)
    n_live = int(table.live.sum())
    assert len(result.p_score) == 2 * n_live
    blue = next(p.index for p in table.players if p.team == 0)
    orange = next(p.index for p in table.players if p.team == 1)
    np.testing.assert_array_equal(result.scored[:n_live], table.label_score[table.live, blue])
    np.testing.assert_array_equal(result.scored[n_live:], table.label_score[table.live, orange])
    # blue's P(concede) is orange's P(score)
    np.testing.assert_allclose(result.p_concede[:n_live], result.p_score[n_live:])


def test_calibration_plot_is_a_png(tmp_path: Path):
    rng = np.random.default_rng(4)
    p = rng.random(1000) * 0.3
    y = rng.random(1000) < p
    result = TeamForecasts(p, p[::-1].copy(), y, y[::-1].copy(), np.arange(1000) // 100)
    calibration_plot({"model": result, "other": result}, tmp_path / "c.png", horizon=10.0)
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG_SIGNATURE


def test_evaluate_prints_model_and_baseline_and_writes_plots(few, tmp_path, capsys):
    replays = tmp_path / "replays"
    replays.mkdir()
    for row in few:  # a folder of links: the replays themselves stay where they are
        (replays / row.path.name).symlink_to(row.path)
    tables = [featurize(parse_replay_file(r.path, r.sha256)) for r in few]
    model = train_impact_model(
        tables, TrainConfig().with_fit(epochs=1, milestone_every=0), progress=False
    )
    export_onnx(model.model, tmp_path / "m.onnx", "impact-eval-test")
    out = tmp_path / "eval"
    argv = ["evaluate", str(replays), "--model", str(tmp_path / "m.onnx"), "--out", str(out)]
    assert main([*argv, "--baseline-epochs", "1", "--val-fraction", "0.34"]) == 0
    printed = capsys.readouterr().out
    other = sorted(t.replay_id for t in tables if not in_scope(t.map_name, t.game_mode))
    assert other, "the three replays include one of another mode or arena (the test needs it)"
    assert f"on 1 held-out replays of {3 - len(other)} Soccar replays" in printed
    assert f"out of scope, for information: the {len(other)} replays" in printed
    for line in ("P(score)     model", "P(score)     ball-only", "P(concede)   model"):
        assert line in printed
    assert "95% interval" in printed and "P(score) ROC AUC, model - ball-only:" in printed
    for name in ("calibration.png", "impact.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["out_of_scope"] == other and other[0] not in summary["held_out_replays"]
    low, high = summary["roc_auc_intervals"]["score"]["model"]
    assert low - 1e-9 <= summary["metrics"]["model"]["score"]["roc_auc"] <= high + 1e-9


def test_dataset_export_writes_one_parquet_per_replay_with_the_schema_version(few, tmp_path):
    assert main(["dataset", "export", str(few[0].path), "--out", str(tmp_path)]) == 0
    (written,) = tmp_path.glob("*.parquet")
    assert written.stem == few[0].path.stem
    metadata = pq.read_schema(written).metadata
    assert metadata[SCHEMA_VERSION_KEY] == str(FEATURE_SCHEMA_VERSION).encode()
    table = read_features(written)
    assert pq.read_metadata(written).num_rows == table.features.shape[0] * len(table.players)


def test_evaluate_without_a_model_fails_clearly(tmp_path):
    with pytest.raises(SystemExit, match="no model at"):
        main(["evaluate", str(tmp_path), "--model", str(tmp_path / "none.onnx")])
