"""The training loop every model here uses (the impact and the skill model): seeded so that a
run is reproducible, checkpointed after every epoch so that a killed run resumes where it was
(bit for bit: each epoch's randomness derives from the seed and the epoch number), early
stopping on the validation loss, milestone snapshots with metadata, and a loss curve as PNG.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from services.trainer.config import FitConfig
from shared.features.table import (
    FEATURE_SCHEMA_VERSION,
)

CHECKPOINT_FILE = "checkpoint.pt"
LOSS_CURVE_FILE = "loss.png"
MILESTONES_DIR = "milestones"


@dataclass(frozen=True)
class RunInfo:
    """What snapshots say about a run besides its metrics."""

    kind: str  # "impact" | "skill"
    data_hash: str  # of the training and validation data, see :func:`data_hash`
    feature_schema_version: int = FEATURE_SCHEMA_VERSION


@dataclass(frozen=True)
class EpochLog:
    epoch: int
    train_loss: float
    val_loss: float


@dataclass(frozen=True)
class FitResult:
    history: list[EpochLog]
    best_epoch: int  # the model returned has this epoch's weights
    stopped_early: bool
    resumed_at: int  # epochs a killed run had done before this one resumed it (0: fresh run)


B = TypeVar("B")
N = TypeVar("N", bound=nn.Module)
N_contra = TypeVar("N_contra", bound=nn.Module, contravariant=True)


class FitTask(Protocol[B, N_contra]):
    """The data side of a fit: batches of training data, a batch's loss, the validation loss
    (of the network ``N_contra`` it trains)."""

    def batches(self, rng: np.random.Generator) -> Iterable[B]: ...

    def loss(self, model: N_contra, batch: B) -> torch.Tensor: ...

    def val_loss(self, model: N_contra) -> float: ...


def data_hash(train_ids: Iterable[str], val_ids: Iterable[str], labels: Iterable[str] = ()) -> str:
    """sha256 over what a model was trained and validated on (replay ids, extra label lines)."""
    lines = sorted([*(f"train {i}" for i in train_ids), *(f"val {i}" for i in val_ids), *labels])
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def fit(
    model: N,
    task: FitTask[B, N],
    config: FitConfig,
    run: RunInfo,
    run_dir: Path | None = None,
    progress: bool = True,
) -> FitResult:
    """Train ``model`` in place; on return it holds the weights of its best validation epoch.

    With ``run_dir``, a checkpoint is written there after every epoch (atomically), and a
    checkpoint found there of the same run (kind, data, settings) is resumed from. torch runs
    on ``config.threads`` threads throughout, whatever the caller set.
    """
    with torch_threads(config.threads):
        return _fit(model, task, config, run, run_dir, progress)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch runs on ``count`` threads inside the block, as it did before it outside."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit(
    model: N,
    task: FitTask[B, N],
    config: FitConfig,
    run: RunInfo,
    run_dir: Path | None,
    progress: bool,
) -> FitResult:
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    state = _FitState(best_state=copy.deepcopy(model.state_dict()))
    checkpoint = _Checkpoint.of(run_dir, config, run) if run_dir is not None else None
    if checkpoint is not None:
        checkpoint.run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.load(model, optimizer, state)
    resumed_at = len(state.history)
    bar = tqdm(
        total=config.epochs, initial=resumed_at, desc=f"train {run.kind}", unit="epoch",
        disable=not progress,
    )  # fmt: skip
    while not state.finished(config):
        epoch = len(state.history) + 1
        train_loss = _train_epoch(model, optimizer, task, config.seed, epoch)
        model.eval()
        with torch.no_grad():
            val_loss = task.val_loss(model)
        state.record(EpochLog(epoch, train_loss, val_loss), model, config.min_delta)
        bar.update()
        bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
        if checkpoint is not None:
            checkpoint.save(model, optimizer, state)
            folder = checkpoint.run_dir
            write_loss_curve(state.history, state.best_epoch, folder / LOSS_CURVE_FILE, run.kind)
            if config.milestone_every and epoch % config.milestone_every == 0:
                metrics = {"train_loss": train_loss, "val_loss": val_loss}
                write_snapshot(folder, f"epoch-{epoch:04d}", model, metrics, run, config, epoch)
    bar.close()
    model.load_state_dict(state.best_state)
    model.eval()
    return FitResult(
        history=list(state.history),
        best_epoch=state.best_epoch,
        stopped_early=len(state.history) < config.epochs,
        resumed_at=resumed_at,
    )


def fit_metrics(fitted: FitResult) -> dict[str, float]:
    best = fitted.history[fitted.best_epoch - 1] if fitted.best_epoch else None
    return {
        "epochs_run": float(len(fitted.history)),
        "best_epoch": float(fitted.best_epoch),
        "best_val_loss": best.val_loss if best else float("nan"),
    }


@dataclass
class _FitState:
    best_state: dict[str, torch.Tensor]
    history: list[EpochLog] = field(default_factory=list)
    best_epoch: int = 0
    best_val: float = float("inf")

    def record(self, log: EpochLog, model: nn.Module, min_delta: float) -> None:
        self.history.append(log)
        if log.val_loss < self.best_val - min_delta:
            self.best_val, self.best_epoch = log.val_loss, log.epoch
            self.best_state = copy.deepcopy(model.state_dict())

    def finished(self, config: FitConfig) -> bool:
        done = len(self.history)
        stale = done - self.best_epoch
        return done >= config.epochs or (config.patience > 0 and stale >= config.patience)


def _train_epoch(
    model: N, optimizer: torch.optim.Optimizer, task: FitTask[B, N], seed: int, epoch: int
) -> float:
    # Each epoch's randomness comes from (seed, epoch) alone, so a resumed run repeats exactly
    # what the killed run would have done.
    torch.manual_seed(seed * 1_000_003 + epoch)
    rng = np.random.default_rng([seed, epoch])
    model.train()
    losses = []
    for batch in task.batches(rng):
        optimizer.zero_grad()
        loss = task.loss(model, batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return float(np.mean(losses)) if losses else float("nan")


@dataclass(frozen=True)
class _Checkpoint:
    """A run's checkpoint: written after every epoch, resumed only by the same run (kind, data
    and settings; the epoch budget may grow)."""

    run_dir: Path
    key: str

    @classmethod
    def of(cls, run_dir: Path, config: FitConfig, run: RunInfo) -> _Checkpoint:
        key = {**asdict(config), "epochs": None, **asdict(run)}
        return cls(run_dir, json.dumps(key, sort_keys=True))

    @property
    def path(self) -> Path:
        return self.run_dir / CHECKPOINT_FILE

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: _FitState) -> None:
        checkpoint = {
            "key": self.key,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "best_state": state.best_state,
            "best_epoch": state.best_epoch,
            "best_val": state.best_val,
            "history": [asdict(log) for log in state.history],
        }
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        torch.save(checkpoint, tmp)
        os.replace(tmp, self.path)  # a kill mid-write leaves the previous checkpoint intact

    def load(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: _FitState) -> None:
        if not self.path.exists():
            return
        checkpoint = torch.load(self.path, weights_only=True)
        if checkpoint["key"] != self.key:
            raise ValueError(
                f"{self.path} is the checkpoint of another run (other data, kind or settings): "
                "remove it or use another run directory"
            )
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        state.best_state = checkpoint["best_state"]
        state.best_epoch = checkpoint["best_epoch"]
        state.best_val = checkpoint["best_val"]
        state.history = [EpochLog(**log) for log in checkpoint["history"]]


def write_snapshot(
    run_dir: Path,
    name: str,
    model: nn.Module,
    metrics: dict[str, float],
    run: RunInfo,
    config: FitConfig,
    epoch: int,
) -> Path:
    """``milestones/NAME.pt`` (weights) and ``NAME.json`` (metadata); returns the JSON path."""
    folder = run_dir / MILESTONES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / f"{name}.pt")
    meta = {
        "name": name,
        "kind": run.kind,
        "epoch": epoch,
        "metrics": metrics,
        "timestamp": datetime.now(UTC).isoformat(),
        "feature_schema_version": run.feature_schema_version,
        "data_hash": run.data_hash,
        "config": asdict(config),
    }
    path = folder / f"{name}.json"
    path.write_text(json.dumps(meta, indent=2, allow_nan=True) + "\n")
    return path


def write_loss_curve(history: list[EpochLog], best_epoch: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [log.epoch for log in history]
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(epochs, [log.train_loss for log in history], marker="o", label="training")
    axes.plot(epochs, [log.val_loss for log in history], marker="o", label="validation")
    if best_epoch:
        axes.axvline(best_epoch, color="grey", linestyle="--", label=f"best (epoch {best_epoch})")
    axes.set(xlabel="epoch", ylabel="loss", title=f"{title} model")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
