"""Train the impact model on feature tables and export it to ONNX. No Kafka, no database.

Labels come from the replays themselves: for each (frame, player) row, does the player's team
score (column 0) or concede (column 1) within the horizon. Replays are split into training and
validation sets by file, never by frame, so validation frames come from unseen matches.

:func:`fit` is the training loop every model here uses (the skill model too): seeded so that a
run is reproducible, checkpointed after every epoch so that a killed run resumes where it was
(bit for bit: each epoch's randomness derives from the seed and the epoch number), early
stopping on the validation loss, milestone snapshots with metadata, and a loss curve as PNG.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from services.trainer.config import TrainConfig
from services.trainer.data import ImpactTask, scoped_tables, split_by_replay, stack_rows
from services.trainer.evaluate import TorchPredictor, forecasts
from services.trainer.fit import FitResult, RunInfo, data_hash, fit, fit_metrics, write_snapshot
from services.trainer.network import ImpactEnsemble, ImpactNet, input_scaling, member_seed
from shared.features.table import (
    N_FEATURES,
    FeatureTable,
)


@dataclass(frozen=True)
class TrainResult:
    model: nn.Module
    metrics: dict[str, float]
    train_replays: list[str]
    val_replays: list[str]
    fit: FitResult | None = None
    data_hash: str = ""
    out_of_scope: list[str] = field(default_factory=list)  # replays left out: shared/scope.py


def train_impact_model(
    tables: list[FeatureTable],
    config: TrainConfig,
    progress: bool = True,
    run_dir: Path | None = None,
) -> TrainResult:
    """Train on those of ``tables`` in the model's scope (Soccar on standard arenas, see
    shared/scope.py), split by file (``config.val_fraction``, ``config.fit.seed``); with
    ``run_dir``, checkpoint there and resume a killed run (an ensemble's members each in
    their own ``member-N`` folder)."""
    scoped, other = scoped_tables(tables)
    train_tables, val_tables = split_by_replay(scoped, config.val_fraction, config.fit.seed)
    result = train_on_split(train_tables, val_tables, config, progress, run_dir)
    return replace(result, out_of_scope=[t.replay_id for t in other])


def train_on_split(
    train_tables: list[FeatureTable],
    val_tables: list[FeatureTable],
    config: TrainConfig,
    progress: bool = True,
    run_dir: Path | None = None,
) -> TrainResult:
    """:func:`train_impact_model` on a split made by the caller: fit on ``train_tables``,
    stop early on ``val_tables`` and report the metrics of those."""
    x_train, y_train = stack_rows(train_tables, config.frame_stride, config.aux)
    x_val, y_val = stack_rows(val_tables)
    if not len(x_train) or not len(x_val):
        raise ValueError("no live frames to train or validate on")
    weights = torch.tensor([1.0, 1.0] + [config.aux_weight] * config.aux.width)
    task = ImpactTask(
        torch.from_numpy(x_train),
        torch.from_numpy(y_train),
        torch.from_numpy(x_val),
        torch.from_numpy(y_val),
        config.batch_size,
        weights,
    )
    mean, std = input_scaling(x_train, config.inputs)
    train_ids, val_ids = [t.replay_id for t in train_tables], [t.replay_id for t in val_tables]
    run = RunInfo("impact", data_hash(train_ids, val_ids))
    nets, fits = [], []
    for member in range(config.members):
        seed = member_seed(config.fit.seed, member)
        torch.manual_seed(seed)
        net = ImpactNet(
            N_FEATURES,
            config.hidden,
            inputs=config.inputs,
            dropout=config.dropout,
            mean=mean,
            std=std,
            aux_outputs=config.aux.width,
            mirrored=config.mirrored,
        )
        member_dir = run_dir / f"member-{member}" if run_dir and config.members > 1 else run_dir
        fit_config = replace(config.fit, seed=seed)
        fits.append(fit(net, task, fit_config, run, member_dir, progress))
        nets.append(net)
    model: nn.Module = nets[0] if config.members == 1 else ImpactEnsemble(nets).eval()
    # per (live frame, team) of the validation replays, as `rlimpact evaluate` reports them
    held_out = forecasts(val_tables, TorchPredictor(model)).metrics()
    metrics = {
        **{f"score_{k}": v for k, v in held_out["score"].items()},
        **{f"concede_{k}": v for k, v in held_out["concede"].items()},
        "train_rows": float(len(x_train)),
        "val_rows": float(len(x_val)),
        "members": float(config.members),
        **fit_metrics(fits[0]),
    }
    if run_dir is not None:
        write_snapshot(run_dir, "final", model, metrics, run, config.fit, fits[0].best_epoch)
    return TrainResult(
        model=model,
        metrics=metrics,
        train_replays=train_ids,
        val_replays=val_ids,
        fit=fits[0],
        data_hash=run.data_hash,
    )
