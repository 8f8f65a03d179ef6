"""The skill model on real replays with planted labels: a test of the machinery (labels that a
hidden function of each player's play produces), not a claim about predicting real ratings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.parser.parse import parse_replay_file
from services.trainer.config import TrainConfig
from services.trainer.export import export_onnx, onnx_parity
from services.trainer.skill import (
    PLANTED_MIN_SPEED,
    SKILL_SIGNATURE,
    SkillConfig,
    export_skill_onnx,
    pearson_r,
    planted_ratings,
    regression_metrics,
    train_skill_model,
)
from services.trainer.train import TrainResult, train_impact_model
from shared.features.batch import featurize
from shared.features.table import FEATURE_NAMES, FeatureTable
from shared.model import ModelSchemaError
from shared.skill import SkillModel, estimate_skill, player_sequences

N_REPLAYS = 36
MIN_FRAMES = 1500  # 2.5 minutes at 10 fps
CONFIG = SkillConfig().with_fit(epochs=25)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tables(good_replays) -> list[FeatureTable]:
    """Team games of some length from the corpus."""
    found = []
    for replay in sorted(good_replays, key=lambda r: r.sha256):
        if (replay.team_size or 0) < 2:
            continue
        table = featurize(parse_replay_file(replay.path, replay.sha256))
        if len(table.time) >= MIN_FRAMES:
            found.append(table)
        if len(found) == N_REPLAYS:
            return found
    pytest.fail(f"only {len(found)} corpus replays of {MIN_FRAMES}+ frames")


@pytest.fixture(scope="module")
def ratings(tables) -> dict[tuple[str, int], float]:
    return {
        (table.replay_id, index): rating
        for table in tables
        for index, rating in planted_ratings(table).items()
    }


@pytest.fixture(scope="module")
def trained(tables, ratings) -> TrainResult:
    return train_skill_model(tables, ratings, CONFIG, progress=False)


def test_planted_ratings_are_recovered_on_held_out_replays(trained, ratings):
    metrics = trained.metrics
    assert not set(trained.train_replays) & set(trained.val_replays)
    assert metrics["val_players"] >= 20
    assert metrics["pearson_r"] >= 0.9, metrics
    assert metrics["rmse"] < 0.5 * metrics["baseline_rmse"], metrics


def test_planted_ratings_spread_and_skip_players_who_did_not_play(tables, ratings):
    values = np.array(list(ratings.values()))
    assert 100 < values.std() < 600 and values.min() >= 0 and values.max() < 3000
    speed = FEATURE_NAMES.index("speed")
    for table in tables:
        for player in table.players:
            moved = table.features[:, player.index, speed].mean() >= PLANTED_MIN_SPEED
            assert ((table.replay_id, player.index) in ratings) == moved


def test_skill_onnx_matches_torch_and_the_scorer_reads_it(trained, tables, tmp_path):
    path = tmp_path / "skill.onnx"
    export_skill_onnx(trained.model, path, "skill-test", CONFIG.stride)
    val = next(t for t in tables if t.replay_id in trained.val_replays)
    sequences = player_sequences(val, CONFIG.stride)
    assert onnx_parity(trained.model, path, sequences, SKILL_SIGNATURE) <= 1e-4
    model = SkillModel(path)
    assert model.version == "skill-test" and model.stride == CONFIG.stride
    estimates = estimate_skill(val, model)
    assert sorted(estimates) == sorted(p.index for p in val.players)
    with torch.no_grad():
        expected = trained.model.rating(torch.from_numpy(sequences)).numpy()
    for index, value in estimates.items():
        assert value == pytest.approx(float(expected[index]), abs=1e-3)


def test_an_impact_model_is_not_taken_for_a_skill_model(tables, tmp_path):
    impact = train_impact_model(tables[:3], TrainConfig(), progress=False).model
    export_onnx(impact, tmp_path / "impact.onnx", "impact-test")
    with pytest.raises(ModelSchemaError, match="not a skill model"):
        SkillModel(tmp_path / "impact.onnx")


def test_too_few_labels_is_a_clear_error(tables):
    one = {(t.replay_id, t.players[0].index): 1000.0 for t in tables[:2]}
    with pytest.raises(ValueError, match="too few labelled players"):
        train_skill_model(tables[:4], one, CONFIG, progress=False)


def test_regression_metrics():
    truth = np.array([1000.0, 1200.0, 1400.0])
    assert pearson_r(truth, 2 * truth + 5) == pytest.approx(1.0)
    assert pearson_r(truth, -truth) == pytest.approx(-1.0)
    metrics = regression_metrics(truth, truth + 10, constant=1200.0)
    assert metrics["rmse"] == pytest.approx(10.0)
    assert metrics["baseline_rmse"] == pytest.approx(np.sqrt(80000 / 3))
