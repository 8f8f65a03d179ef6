"""The training loop on real replays: seeds, checkpoints and resume after a kill, early stopping,
milestone snapshots with metadata, the loss curve, and ONNX parity."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from services.parser.parse import parse_replay_file
from services.trainer.config import TrainConfig
from services.trainer.data import model_split, split_by_replay, stack_rows
from services.trainer.export import export_onnx, onnx_parity
from services.trainer.fit import (
    CHECKPOINT_FILE,
    LOSS_CURVE_FILE,
    MILESTONES_DIR,
    data_hash,
    torch_threads,
)
from services.trainer.network import ImpactEnsemble, weights_digest
from services.trainer.train import train_impact_model
from shared.features.batch import featurize
from shared.features.table import FEATURE_SCHEMA_VERSION, N_FEATURES, FeatureTable
from shared.model import ImpactModel, recorded_split, split_metadata
from shared.scope import in_scope
from shared.settings import REPO_ROOT
from tests.conftest import ManifestRow

FAST = TrainConfig(batch_size=4096).with_fit(epochs=3, milestone_every=0)

# Trains in a separate process, to be killed, on the replays given as PATH=SHA256 arguments.
KILLABLE_RUN = """
import sys
from pathlib import Path
from shared.features.batch import featurize
from services.parser.parse import parse_replay_file
from services.trainer.train import TrainConfig, train_impact_model
run_dir, epochs, *replays = sys.argv[1:]
tables = [featurize(parse_replay_file(Path(r.split("=")[0]), r.split("=")[1])) for r in replays]
config = TrainConfig(batch_size=4096).with_fit(epochs=int(epochs), patience=0, milestone_every=0)
train_impact_model(tables, config, progress=False, run_dir=Path(run_dir))
"""


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def chosen(good_replays) -> list[ManifestRow]:
    """Four 2v2 Soccar replays on standard arenas (what the impact model trains on)."""
    rows = [r for r in good_replays if (r.goals or 0) >= 2 and r.team_size == 2]
    parsed = ((r, parse_replay_file(r.path, r.sha256)) for r in rows)
    scoped = (r for r, p in parsed if in_scope(p.map_name, p.game_mode))
    return list(itertools.islice(scoped, 4))


@pytest.fixture(scope="module")
def tables(chosen) -> list[FeatureTable]:
    return [featurize(parse_replay_file(r.path, r.sha256)) for r in chosen]


def _weights(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_same_seed_same_model_other_seed_another(tables):
    first = train_impact_model(tables, FAST, progress=False)
    again = train_impact_model(tables, FAST, progress=False)
    other = train_impact_model(tables, FAST.with_fit(seed=1), progress=False)
    assert _same(_weights(first.model), _weights(again.model))
    assert first.metrics == again.metrics
    assert not _same(_weights(first.model), _weights(other.model))
    # the digest in a local model's version tells the two apart, and only them
    assert weights_digest(first.model) == weights_digest(again.model)
    assert weights_digest(first.model) != weights_digest(other.model)


def test_a_seeded_run_does_not_depend_on_the_callers_torch_threads(tables):
    with torch_threads(2):
        called_on_two = train_impact_model(tables, FAST, progress=False)
    called_on_one = train_impact_model(tables, FAST, progress=False)
    assert _same(_weights(called_on_two.model), _weights(called_on_one.model))
    # the count does change the arithmetic, which is why fit fixes it
    on_two = train_impact_model(tables, FAST.with_fit(threads=2), progress=False)
    assert not _same(_weights(on_two.model), _weights(called_on_one.model))


def test_a_killed_run_resumes_and_ends_as_an_uninterrupted_one(chosen, tables, tmp_path):
    epochs = 6
    replays = [f"{r.path}={r.sha256}" for r in chosen]
    run_dir = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-c", KILLABLE_RUN, str(run_dir), str(epochs), *replays], cwd=REPO_ROOT
    )
    deadline = time.monotonic() + 120
    while not (run_dir / CHECKPOINT_FILE).exists():
        assert process.poll() is None, "the training process ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)  # mid-run: epoch 1 is checkpointed, later ones are not
    process.wait()
    assert process.returncode == -signal.SIGKILL

    config = TrainConfig(batch_size=4096).with_fit(epochs=epochs, patience=0, milestone_every=0)
    resumed = train_impact_model(tables, config, progress=False, run_dir=run_dir)
    fresh = train_impact_model(tables, config, progress=False, run_dir=tmp_path / "fresh")
    assert resumed.fit is not None and fresh.fit is not None
    assert 1 <= resumed.fit.resumed_at < epochs
    assert fresh.fit.resumed_at == 0
    assert [e.epoch for e in resumed.fit.history] == list(range(1, epochs + 1))
    assert resumed.fit.history == fresh.fit.history
    assert _same(_weights(resumed.model), _weights(fresh.model))


def test_a_finished_run_is_not_trained_again(tables, tmp_path):
    first = train_impact_model(tables, FAST, progress=False, run_dir=tmp_path)
    second = train_impact_model(tables, FAST, progress=False, run_dir=tmp_path)
    assert second.fit is not None and second.fit.resumed_at == FAST.fit.epochs
    assert _same(_weights(first.model), _weights(second.model))


def test_a_checkpoint_of_other_data_is_refused(tables, tmp_path):
    train_impact_model(tables[:3], FAST, progress=False, run_dir=tmp_path)
    with pytest.raises(ValueError, match="checkpoint of another run"):
        train_impact_model(tables[1:], FAST, progress=False, run_dir=tmp_path)


def test_early_stopping_keeps_the_best_epoch(tables):
    # No later epoch can beat the first by 10 nats: training stops after `patience` epochs.
    config = TrainConfig(batch_size=4096).with_fit(epochs=10, patience=2, min_delta=10.0)
    result = train_impact_model(tables, config, progress=False)
    assert result.fit is not None
    assert result.fit.stopped_early and len(result.fit.history) == 3
    assert result.fit.best_epoch == 1
    _, val = split_by_replay(tables, config.val_fraction, config.fit.seed)
    x_val, y_val = stack_rows(val)
    with torch.no_grad():
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            result.model.logits(torch.from_numpy(x_val)), torch.from_numpy(y_val)
        ).item()
    assert loss == pytest.approx(result.fit.history[0].val_loss, rel=1e-5)
    assert result.metrics["best_epoch"] == 1.0 and result.metrics["epochs_run"] == 3.0


def test_milestones_carry_metadata_and_the_loss_curve_is_a_png(tables, tmp_path):
    config = TrainConfig(batch_size=4096).with_fit(epochs=4, patience=0, milestone_every=2)
    result = train_impact_model(tables, config, progress=False, run_dir=tmp_path)
    names = sorted(p.name for p in (tmp_path / MILESTONES_DIR).iterdir())
    assert names == [
        "epoch-0002.json", "epoch-0002.pt", "epoch-0004.json", "epoch-0004.pt",
        "final.json", "final.pt",
    ]  # fmt: skip
    expected_hash = data_hash(result.train_replays, result.val_replays)
    for name in ("epoch-0002", "epoch-0004", "final"):
        meta = json.loads((tmp_path / MILESTONES_DIR / f"{name}.json").read_text())
        assert meta["data_hash"] == expected_hash == result.data_hash
        assert meta["feature_schema_version"] == FEATURE_SCHEMA_VERSION
        assert meta["kind"] == "impact" and meta["config"]["seed"] == 0
        assert time.time() - _epoch_seconds(meta["timestamp"]) < 600
        assert np.isfinite(meta["metrics"]["val_loss" if name != "final" else "best_val_loss"])
    final = json.loads((tmp_path / MILESTONES_DIR / "final.json").read_text())
    assert final["metrics"]["score_roc_auc"] == result.metrics["score_roc_auc"]
    snapshot = torch.load(tmp_path / MILESTONES_DIR / "final.pt", weights_only=True)
    assert _same({k: v.numpy() for k, v in snapshot.items()}, _weights(result.model))
    with Image.open(tmp_path / LOSS_CURVE_FILE) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100


def test_data_hash_depends_on_the_split_and_the_labels():
    assert data_hash(["a", "b"], ["c"]) == data_hash(["b", "a"], ["c"])
    assert data_hash(["a", "b"], ["c"]) != data_hash(["a", "c"], ["b"])
    assert data_hash(["a"], ["c"], ["label a 0 1000"]) != data_hash(["a"], ["c"], ["label a 0 9"])


def test_impact_onnx_export_matches_torch(tables, tmp_path):
    result = train_impact_model(tables, FAST, progress=False)
    path = tmp_path / "impact.onnx"
    export_onnx(result.model, path, "impact-parity")
    rows = tables[0].features.reshape(-1, N_FEATURES)[:4096]
    assert onnx_parity(result.model, path, rows) <= 1e-4


def test_an_ensemble_is_the_mean_of_members_trained_on_one_split(tables, tmp_path):
    single = train_impact_model(tables, FAST, progress=False)
    pair = train_impact_model(tables, replace(FAST, members=2), progress=False, run_dir=tmp_path)
    assert isinstance(pair.model, ImpactEnsemble) and len(pair.model.members) == 2
    assert (pair.train_replays, pair.val_replays) == (single.train_replays, single.val_replays)
    first, second = pair.model.members
    assert _same(_weights(first), _weights(single.model))  # member 0 is the single model
    assert not _same(_weights(first), _weights(second))
    assert all((tmp_path / f"member-{i}" / CHECKPOINT_FILE).exists() for i in (0, 1))
    rows = tables[0].features.reshape(-1, N_FEATURES)[:4096]
    with torch.no_grad():
        mean = (first(torch.from_numpy(rows)) + second(torch.from_numpy(rows))) / 2
        np.testing.assert_allclose(pair.model(torch.from_numpy(rows)).numpy(), mean.numpy())
    assert pair.metrics["score_roc_auc"] != single.metrics["score_roc_auc"]
    path = tmp_path / "ensemble.onnx"
    export_onnx(pair.model, path, "impact-ensemble")
    assert onnx_parity(pair.model, path, rows) <= 1e-4


def _epoch_seconds(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def test_a_model_records_its_split_and_evaluation_holds_out_what_it_was_not_trained_on(
    tables, tmp_path
):
    result = train_impact_model(tables, FAST, progress=False)
    path = tmp_path / "impact.onnx"
    metadata = split_metadata(result.train_replays, result.val_replays)
    export_onnx(result.model, path, "impact-split", metadata=metadata)
    split = ImpactModel(path).split
    assert split is not None
    assert split.train_replays == set(result.train_replays)
    assert split.val_replays == set(result.val_replays)
    trained, held_out = model_split(tables, split, val_fraction=0.5, seed=99)
    assert {t.replay_id for t in trained} == set(result.train_replays)
    assert {t.replay_id for t in held_out} == set(result.val_replays)
    with pytest.raises(ValueError, match="none is held out"):
        model_split(trained, split, val_fraction=0.5, seed=99)


def test_a_model_without_a_recorded_split_is_held_out_by_seed(tables):
    assert model_split(tables, None, 0.2, 0) == split_by_replay(tables, 0.2, 0)
    assert recorded_split({"rlimpact.version": "exported before splits were recorded"}) is None
    shipped = ImpactModel(REPO_ROOT / "models" / "default" / "impact.onnx").split
    assert shipped is not None and shipped.train_replays and shipped.val_replays
    assert not shipped.train_replays & shipped.val_replays
