"""Train, export and score on real replays: torch and onnxruntime must agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from services.featurizer.features import N_FEATURES, FeatureTable, featurize
from services.parser.parse import parse_replay_file
from services.scorer.score import ImpactModel, ModelSchemaError, score_table
from services.trainer.train import (
    TrainConfig,
    binary_metrics,
    export_onnx,
    roc_auc,
    split_by_replay,
    train_impact_model,
)


@pytest.fixture(scope="module")
def tables(good_replays) -> list[FeatureTable]:
    chosen = [r for r in good_replays if (r.goals or 0) >= 2][:4]
    return [featurize(parse_replay_file(r.path, r.sha256)) for r in chosen]


@pytest.fixture(scope="module")
def exported(tables, tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    result = train_impact_model(tables, TrainConfig(epochs=1), progress=False)
    path = tmp_path_factory.mktemp("model") / "impact.onnx"
    export_onnx(result.model, path, "impact-test")
    return result.model, path


def test_split_is_by_replay_and_disjoint(tables):
    train, val = split_by_replay(tables, val_fraction=0.25, seed=0)
    assert len(val) == 1 and len(train) == 3
    assert not {t.replay_id for t in train} & {t.replay_id for t in val}


def test_onnx_matches_torch(exported, tables):
    model, path = exported
    rows = tables[0].features.reshape(-1, N_FEATURES)[:5000]
    with torch.no_grad():
        expected = model(torch.from_numpy(rows)).numpy()
    got = ImpactModel(path).predict(rows)
    assert np.max(np.abs(got - expected)) <= 1e-4


def test_one_score_per_player(exported, tables):
    _, path = exported
    model = ImpactModel(path)
    assert model.version == "impact-test"
    scores = score_table(tables[0], model)
    assert [s.player_index for s in scores] == [p.index for p in tables[0].players]
    assert all(np.isfinite(s.impact) and -100 <= s.impact <= 100 for s in scores)


def test_model_for_another_feature_schema_is_refused(exported, tmp_path):
    import onnx

    _, path = exported
    proto = onnx.load(str(path))
    for entry in proto.metadata_props:
        if entry.key == "rlimpact.feature_schema_version":
            entry.value = "999"
    onnx.save(proto, str(tmp_path / "old.onnx"))
    with pytest.raises(ModelSchemaError, match="v999"):
        ImpactModel(tmp_path / "old.onnx")


def test_roc_auc_equals_pair_counting():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300).astype(float)
    scores = np.round(rng.random(300) + 0.3 * labels, 1)  # rounding makes ties
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert roc_auc(labels, scores) == pytest.approx(pairs / (len(pos) * len(neg)))


def test_metrics_of_a_perfect_and_a_constant_forecast():
    labels = np.array([0.0, 1.0, 0.0, 1.0])
    perfect = binary_metrics(labels, labels)
    assert perfect["roc_auc"] == 1.0 and perfect["brier"] == pytest.approx(0.0, abs=1e-9)
    assert binary_metrics(labels, np.full(4, 0.5))["log_loss"] == pytest.approx(np.log(2))
