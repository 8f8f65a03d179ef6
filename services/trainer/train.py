"""Train the impact model on feature tables and export it to ONNX. No Kafka, no database.

Labels come from the replays themselves: for each (frame, player) row, does the player's team
score (column 0) or concede (column 1) within the horizon. Replays are split into training and
validation sets by file, never by frame, so validation frames come from unseen matches.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from tqdm import tqdm

from services.featurizer.features import FEATURE_SCHEMA_VERSION, N_FEATURES, FeatureTable
from services.scorer.score import INPUT_NAME, META_SCHEMA, META_VERSION, OUTPUT_NAME

EPSILON = 1e-7


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 6
    batch_size: int = 2048
    learning_rate: float = 2e-3
    hidden: tuple[int, ...] = (128, 64)
    val_fraction: float = 0.2
    seed: int = 0


@dataclass(frozen=True)
class TrainResult:
    model: nn.Module
    metrics: dict[str, float]
    train_replays: list[str]
    val_replays: list[str]


class ImpactNet(nn.Module):
    """MLP from one (frame, player) feature row to P(score), P(concede) within the horizon."""

    def __init__(self, n_features: int = N_FEATURES, hidden: tuple[int, ...] = (128, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, 2))
        self.logits = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(features))


def split_by_replay(
    tables: list[FeatureTable], val_fraction: float, seed: int
) -> tuple[list[FeatureTable], list[FeatureTable]]:
    if len(tables) < 2:
        raise ValueError(f"need at least 2 featurized replays to train, got {len(tables)}")
    ranked = sorted(
        tables, key=lambda t: hashlib.sha256(f"{seed}:{t.replay_id}".encode()).hexdigest()
    )
    n_val = min(len(ranked) - 1, max(1, round(val_fraction * len(ranked))))
    return ranked[n_val:], ranked[:n_val]


def stack_rows(tables: list[FeatureTable]) -> tuple[np.ndarray, np.ndarray]:
    features = np.concatenate([t.features.reshape(-1, N_FEATURES) for t in tables])
    labels = np.concatenate(
        [np.stack([t.label_score.reshape(-1), t.label_concede.reshape(-1)], axis=1) for t in tables]
    )
    return features.astype(np.float32), labels.astype(np.float32)


def train_impact_model(
    tables: list[FeatureTable], config: TrainConfig = TrainConfig(), progress: bool = True
) -> TrainResult:
    torch.manual_seed(config.seed)
    generator = np.random.default_rng(config.seed)
    train_tables, val_tables = split_by_replay(tables, config.val_fraction, config.seed)
    x_train, y_train = stack_rows(train_tables)
    x_val, y_val = stack_rows(val_tables)
    model = ImpactNet(N_FEATURES, config.hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    loss_fn = nn.BCEWithLogitsLoss()
    features, labels = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for _ in tqdm(range(config.epochs), desc="train", unit="epoch", disable=not progress):
        model.train()
        order = generator.permutation(len(features))
        for batch in np.array_split(order, max(1, len(order) // config.batch_size)):
            index = torch.from_numpy(batch)
            optimizer.zero_grad()
            loss = loss_fn(model.logits(features[index]), labels[index])
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(x_val)).numpy()
    metrics = {
        **{f"score_{k}": v for k, v in binary_metrics(y_val[:, 0], predicted[:, 0]).items()},
        **{f"concede_{k}": v for k, v in binary_metrics(y_val[:, 1], predicted[:, 1]).items()},
        "train_rows": float(len(x_train)),
        "val_rows": float(len(x_val)),
    }
    return TrainResult(
        model=model,
        metrics=metrics,
        train_replays=[t.replay_id for t in train_tables],
        val_replays=[t.replay_id for t in val_tables],
    )


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    p = np.clip(probabilities.astype(np.float64), EPSILON, 1 - EPSILON)
    y = labels.astype(np.float64)
    return {
        "log_loss": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))),
        "brier": float(np.mean((p - y) ** 2)),
        "roc_auc": roc_auc(y, p),
        "positive_rate": float(y.mean()),
    }


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUC with average ranks for ties; NaN when only one class is present."""
    positives = labels > 0.5
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = ((ends - counts + 1 + ends) / 2.0)[inverse]
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def export_onnx(model: nn.Module, path: Path, version: str) -> None:
    """Write ``model`` as ONNX with its version and feature schema in the metadata."""
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, N_FEATURES),),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "rows"}, OUTPUT_NAME: {0: "rows"}},
            dynamo=False,
        )
    proto = onnx.load(str(path))
    for key, value in ((META_VERSION, version), (META_SCHEMA, str(FEATURE_SCHEMA_VERSION))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
