"""Skill model: one player's feature sequence over a replay -> a rating (MMR). No Kafka, no DB.

The network normalizes each feature row (every ``stride``-th frame), embeds it, runs a
temporal convolution over the sequence, averages that and the rows over time and maps both
averages to a rating (a linear read-out of the averaged rows sits beside the learned
features). Training crops random windows of each player's sequence; validation and scoring
read the whole replay. Replays are split into training and validation sets by file, as for
the impact model. The ONNX graph outputs standardized ratings (label standard deviations from
the label mean: values near 0, so torch and onnxruntime can be held to 1e-4); the label mean
and deviation travel in its metadata, and :class:`shared.skill.SkillModel` turns
them into MMR.

Labels are ratings per (replay, player): from Postgres (``player_labels``) in the trainer
service, or *planted* (:func:`planted_ratings`) to test this machinery where no real ratings
exist: a rating that is a hidden function of what the player did in the replay.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from services.trainer.config import FitConfig, FitsWith
from services.trainer.data import split_by_replay
from services.trainer.export import OnnxSignature, export_onnx
from services.trainer.fit import RunInfo, data_hash, fit, fit_metrics, write_snapshot
from services.trainer.train import TrainResult
from shared.features.table import FEATURE_NAMES, N_FEATURES, FeatureTable
from shared.skill import (
    DEFAULT_STRIDE,
    META_RATING_MEAN,
    META_RATING_STD,
    META_STRIDE,
    SKILL_INPUT,
    SKILL_OUTPUT,
    player_sequences,
)

SKILL_SIGNATURE = OnnxSignature(
    input_name=SKILL_INPUT,
    output_name=SKILL_OUTPUT,
    example_shape=(2, 16, N_FEATURES),
    dynamic_axes={SKILL_INPUT: {0: "players", 1: "frames"}, SKILL_OUTPUT: {0: "players"}},
)
MIN_FEATURE_STD = 1e-2  # below this a feature counts as constant in the training data

PlayerKey = tuple[str, int]  # (replay_id, player_index)


# The skill model's fit settings when nothing else is asked for
SKILL_FIT = FitConfig(
    epochs=40, learning_rate=3e-3, weight_decay=1e-2, seed=0, patience=8, milestone_every=10
)


@dataclass(frozen=True)
class SkillConfig(FitsWith):
    fit: FitConfig = SKILL_FIT
    batch_size: int = 32
    window: int = 600  # rows per training crop: 5 min at the default stride
    crops_per_player: int = 4  # crops of each training player per epoch
    stride: int = DEFAULT_STRIDE
    hidden: int = 32
    val_fraction: float = 0.25
    min_rows: int = 60  # players with fewer rows (30 s) are neither trained nor validated on


@dataclass(frozen=True)
class SkillExample:
    replay_id: str
    player_index: int
    sequence: np.ndarray  # [T, F] float32
    rating: float


class SkillNet(nn.Module):
    """[players, frames, features] -> [players] standardized ratings (``rating()``: MMR)."""

    # buffers (register_buffer): the scaling of the inputs and of the ratings
    feature_mean: torch.Tensor
    feature_std: torch.Tensor
    rating_mean: torch.Tensor
    rating_std: torch.Tensor

    def __init__(
        self,
        feature_mean: np.ndarray,
        feature_std: np.ndarray,
        rating_mean: float,
        rating_std: float,
        hidden: int = 32,
    ) -> None:
        super().__init__()
        n_features = len(feature_mean)
        self.register_buffer("feature_mean", torch.tensor(feature_mean, dtype=torch.float32))
        self.register_buffer(
            "feature_std",
            # A feature constant in training (team size, say) is left unscaled, not blown up.
            torch.tensor(
                np.where(feature_std < MIN_FEATURE_STD, 1.0, feature_std), dtype=torch.float32
            ),
        )
        self.register_buffer("rating_mean", torch.tensor(rating_mean, dtype=torch.float32))
        self.register_buffer("rating_std", torch.tensor(max(rating_std, 1.0), dtype=torch.float32))
        self.rows = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU())
        self.context = nn.Sequential(nn.Conv1d(hidden, hidden, kernel_size=5, padding=2), nn.ReLU())
        self.head = nn.Linear(n_features + hidden, 1)

    def forward(self, sequences: torch.Tensor) -> torch.Tensor:
        """Standardized ratings: in label standard deviations from the label mean."""
        x = (sequences - self.feature_mean) / self.feature_std  # [P, T, F]
        learned = self.context(self.rows(x).transpose(1, 2).contiguous())  # [P, H, T]
        pooled = torch.cat([x.mean(dim=1), learned.mean(dim=2)], dim=1)  # [P, F + H]
        return self.head(pooled).squeeze(-1)

    def rating(self, sequences: torch.Tensor) -> torch.Tensor:
        return self(sequences) * self.rating_std + self.rating_mean


# ---------------------------------------------------------------- planted labels

# The hidden function behind planted ratings: per-player means over the replay's frames.
PLANTED_BASE = 1100.0
PLANTED_TERMS = (  # (feature, reference value, MMR per unit)
    ("boost", 0.40, 1500.0),  # boost kept in the tank (0..1)
    ("attacking_half", 0.30, 1000.0),  # share of frames in the opponents' half
    ("speed", 0.50, 2000.0),  # car speed / 2300 uu/s
    ("ball_dist", 0.50, -1200.0),  # distance to the ball / 5120 uu: closer is better
)
PLANTED_MIN_SPEED = 0.2  # players who barely moved (AFK, left early) get no rating


def planted_ratings(table: FeatureTable) -> dict[int, float]:
    """A rating per active player index computed from what the player did: for testing only.

    No real ratings ship with this project; these let the tests and ``rlimpact train-skill
    --planted-labels`` check that the skill machinery can recover a rating that depends on
    behaviour. They say nothing about how well real MMR can be predicted.
    """
    columns = {name: i for i, name in enumerate(FEATURE_NAMES)}
    features = table.features
    active = features[:, :, columns["speed"]].mean(axis=0) >= PLANTED_MIN_SPEED
    means = {
        "boost": features[:, :, columns["boost"]].mean(axis=0),
        "attacking_half": (features[:, :, columns["y"]] > 0).mean(axis=0),
        "speed": features[:, :, columns["speed"]].mean(axis=0),
        "ball_dist": features[:, :, columns["ball_dist"]].mean(axis=0),
    }
    ratings = np.full(features.shape[1], PLANTED_BASE)
    for name, reference, weight in PLANTED_TERMS:
        ratings += weight * (means[name] - reference)
    ratings = np.clip(ratings, 0.0, None)  # like MMR, never negative
    return {p.index: float(ratings[p.index]) for p in table.players if active[p.index]}


# ---------------------------------------------------------------- training


def skill_examples(
    tables: Iterable[FeatureTable], ratings: Mapping[PlayerKey, float], config: SkillConfig
) -> list[SkillExample]:
    """One example per labelled player with at least ``config.min_rows`` rows."""
    examples = []
    for table in tables:
        sequences = player_sequences(table, config.stride)
        for player in table.players:
            rating = ratings.get((table.replay_id, player.index))
            if rating is None or sequences.shape[1] < config.min_rows:
                continue
            examples.append(
                SkillExample(table.replay_id, player.index, sequences[player.index], rating)
            )
    return examples


@dataclass(frozen=True)
class _SkillTask:
    train: list[SkillExample]
    val: list[SkillExample]
    model: SkillNet
    config: SkillConfig

    def batches(self, rng: np.random.Generator) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        order = rng.permutation(np.repeat(np.arange(len(self.train)), self.config.crops_per_player))
        for chunk in np.array_split(order, max(1, len(order) // self.config.batch_size)):
            chosen = [self.train[i] for i in chunk]
            window = min(self.config.window, *(len(e.sequence) for e in chosen))
            crops = []
            for example in chosen:
                start = rng.integers(0, len(example.sequence) - window + 1)
                crops.append(example.sequence[start : start + window])
            yield torch.from_numpy(np.stack(crops)), self._standard(chosen)

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        sequences, targets = batch
        return nn.functional.mse_loss(model(sequences), targets)

    def val_loss(self, model: nn.Module) -> float:
        predicted = [model(torch.from_numpy(e.sequence[None])) for e in self.val]
        return nn.functional.mse_loss(torch.cat(predicted), self._standard(self.val)).item()

    def _standard(self, examples: list[SkillExample]) -> torch.Tensor:
        ratings = torch.tensor([e.rating for e in examples], dtype=torch.float32)
        return (ratings - self.model.rating_mean) / self.model.rating_std


def predict(model: SkillNet, examples: list[SkillExample]) -> np.ndarray:
    """Ratings for whole sequences, one forward pass per example (lengths differ)."""
    model.eval()
    with torch.no_grad():
        return np.array(
            [model.rating(torch.from_numpy(e.sequence[None])).item() for e in examples],
            dtype=np.float64,
        )


def train_skill_model(
    tables: list[FeatureTable],
    ratings: Mapping[PlayerKey, float],
    config: SkillConfig = SkillConfig(),
    progress: bool = True,
    run_dir: Path | None = None,
) -> TrainResult:
    labelled = {key[0] for key in ratings}
    usable = [t for t in tables if t.replay_id in labelled]
    train_tables, val_tables = split_by_replay(usable, config.val_fraction, config.fit.seed)
    train = skill_examples(train_tables, ratings, config)
    val = skill_examples(val_tables, ratings, config)
    if len(train) < 2 or not val:
        raise ValueError(
            f"too few labelled players to train a skill model: {len(train)} for training, "
            f"{len(val)} for validation (each needs {config.min_rows} rows)"
        )
    rows = np.concatenate([e.sequence for e in train])
    train_ratings = np.array([e.rating for e in train])
    torch.manual_seed(config.fit.seed)
    model = SkillNet(
        rows.mean(axis=0),
        rows.std(axis=0),
        float(train_ratings.mean()),
        float(train_ratings.std()),
        config.hidden,
    )
    labels = [f"label {e.replay_id} {e.player_index} {e.rating:.6g}" for e in train + val]
    train_ids, val_ids = [t.replay_id for t in train_tables], [t.replay_id for t in val_tables]
    run = RunInfo("skill", data_hash(train_ids, val_ids, labels))
    fitted = fit(model, _SkillTask(train, val, model, config), config.fit, run, run_dir, progress)
    truth = np.array([e.rating for e in val])
    metrics = {
        **regression_metrics(truth, predict(model, val), float(train_ratings.mean())),
        "train_players": float(len(train)),
        "val_players": float(len(val)),
        **fit_metrics(fitted),
    }
    if run_dir is not None:
        write_snapshot(run_dir, "final", model, metrics, run, config.fit, fitted.best_epoch)
    return TrainResult(model, metrics, train_ids, val_ids, fit=fitted, data_hash=run.data_hash)


def regression_metrics(
    truth: np.ndarray, predicted: np.ndarray, constant: float
) -> dict[str, float]:
    """Pearson r and RMSE, and the RMSE of always predicting ``constant`` (the baseline)."""
    return {
        "pearson_r": pearson_r(truth, predicted),
        "rmse": float(np.sqrt(np.mean((predicted - truth) ** 2))),
        "baseline_rmse": float(np.sqrt(np.mean((constant - truth) ** 2))),
    }


def pearson_r(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64) - a.mean(), b.astype(np.float64) - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def export_skill_onnx(model: SkillNet, path: Path, version: str, stride: int) -> None:
    export_onnx(
        model,
        path,
        version,
        kind="skill",
        signature=SKILL_SIGNATURE,
        metadata={
            META_STRIDE: str(stride),
            META_RATING_MEAN: repr(float(model.rating_mean)),
            META_RATING_STD: repr(float(model.rating_std)),
        },
    )
