"""Training data of the impact model: replays in scope, split by file, stacked into rows and
targets, and the fit task over them."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from services.trainer.network import ImpactNet
from services.trainer.targets import NO_AUX, AuxTargets, training_targets
from shared.features.table import (
    N_FEATURES,
    FeatureTable,
)
from shared.model import RecordedSplit
from shared.scope import in_scope

VAL_CHUNK_ROWS = 65536


def shuffled_by_replay(tables: list[FeatureTable], seed: int) -> list[FeatureTable]:
    """``tables`` in an order drawn from ``seed`` and each replay's id alone: a replay keeps
    its side of a split whatever other replays come and go."""
    return sorted(
        tables, key=lambda t: hashlib.sha256(f"{seed}:{t.replay_id}".encode()).hexdigest()
    )


def split_by_replay(
    tables: list[FeatureTable], val_fraction: float, seed: int
) -> tuple[list[FeatureTable], list[FeatureTable]]:
    if len(tables) < 2:
        raise ValueError(f"need at least 2 featurized replays to train, got {len(tables)}")
    ranked = shuffled_by_replay(tables, seed)
    n_val = min(len(ranked) - 1, max(1, round(val_fraction * len(ranked))))
    return ranked[n_val:], ranked[:n_val]


def model_split(
    tables: list[FeatureTable], split: RecordedSplit | None, val_fraction: float, seed: int
) -> tuple[list[FeatureTable], list[FeatureTable]]:
    """(trained on, held out) of ``tables`` for a model: by the split it records when it does
    (held out: every replay it was not trained on), else by :func:`split_by_replay` with
    ``val_fraction`` and ``seed``, the split of a model trained with those."""
    if split is None:
        return split_by_replay(tables, val_fraction, seed)
    trained = [t for t in tables if t.replay_id in split.train_replays]
    held_out = [t for t in tables if t.replay_id not in split.train_replays]
    if not held_out:
        raise ValueError("the model was trained on every one of these replays: none is held out")
    return trained, held_out


def scoped_tables(tables: list[FeatureTable]) -> tuple[list[FeatureTable], list[FeatureTable]]:
    """(in scope, out of scope): the tables the impact model is trained and evaluated on
    (shared/scope.py), and the others."""
    scoped: tuple[list[FeatureTable], list[FeatureTable]] = ([], [])
    for table in tables:
        scoped[0 if in_scope(table.map_name, table.game_mode) else 1].append(table)
    return scoped


def stack_rows(
    tables: list[FeatureTable], stride: int = 1, aux: AuxTargets = NO_AUX
) -> tuple[np.ndarray, np.ndarray]:
    """(features, targets) rows of every ``stride``-th live frame: the model never sees the
    dead time between a goal and the next kickoff (goal replay, countdown). Targets are
    (score, concede) within the table's horizon, then ``aux``'s (services/trainer/targets.py)."""
    pairs = [(t, np.flatnonzero(t.live)[::stride]) for t in tables]
    features = np.concatenate([t.features[f].reshape(-1, N_FEATURES) for t, f in pairs])
    targets = np.concatenate([training_targets(t, f, aux) for t, f in pairs])
    return features.astype(np.float32), targets


@dataclass(frozen=True)
class ImpactTask:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    batch_size: int
    weights: torch.Tensor  # per target column: 1 for the forecast pair, aux_weight for the others

    def batches(self, rng: np.random.Generator) -> Iterable[torch.Tensor]:
        order = rng.permutation(len(self.x_train))
        for batch in np.array_split(order, max(1, len(order) // self.batch_size)):
            yield torch.from_numpy(batch)

    def loss(self, model: ImpactNet, batch: torch.Tensor) -> torch.Tensor:
        losses = nn.functional.binary_cross_entropy_with_logits(
            model.all_logits(self.x_train[batch]), self.y_train[batch], reduction="none"
        )
        return (losses * self.weights).sum(dim=1).mean() / self.weights.sum()

    def val_loss(self, model: ImpactNet) -> float:
        total = 0.0
        for start in range(0, len(self.x_val), VAL_CHUNK_ROWS):
            rows = slice(start, start + VAL_CHUNK_ROWS)
            total += nn.functional.binary_cross_entropy_with_logits(
                model.logits(self.x_val[rows]), self.y_val[rows], reduction="sum"
            ).item()
        return total / self.y_val.numel()
