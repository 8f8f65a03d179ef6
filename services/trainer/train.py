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

import copy
import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from tqdm import tqdm

from services.trainer.evaluate import TorchPredictor, forecasts
from services.trainer.evaluate import binary_metrics as binary_metrics  # re-exported
from services.trainer.evaluate import roc_auc as roc_auc  # re-exported
from services.trainer.targets import NO_AUX, AuxTargets, training_targets
from shared.features.table import (
    FEATURE_NAMES,
    FEATURE_SCHEMA_VERSION,
    MIRROR_SIGNS,
    N_FEATURES,
    FeatureTable,
)
from shared.model import INPUT_NAME, META_KIND, META_SCHEMA, META_VERSION, OUTPUT_NAME
from shared.scope import in_scope

CHECKPOINT_FILE = "checkpoint.pt"
LOSS_CURVE_FILE = "loss.png"
MILESTONES_DIR = "milestones"
VAL_CHUNK_ROWS = 65536


@dataclass(frozen=True)
class FitConfig:
    """How :func:`fit` runs, whatever the model."""

    epochs: int
    learning_rate: float
    seed: int = 0
    weight_decay: float = 0.0
    patience: int = 3  # stop after this many epochs without a better validation loss (0: never)
    min_delta: float = 0.0  # how much lower a validation loss must be to count as better
    milestone_every: int = 5  # snapshot every N epochs, besides the final one (0: final only)
    # torch's arithmetic depends on how many threads share a kernel: a seeded run gives the same
    # weights bit for bit only with the same count (and CPU kind), whatever the machine's cores
    threads: int = 1

    @classmethod
    def of(cls, config: object) -> FitConfig:
        """The fit settings of a model's config: its fields of the same names."""
        names = [f.name for f in fields(cls) if hasattr(config, f.name)]
        return cls(**{name: getattr(config, name) for name in names})


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


class FitTask(Protocol[B]):
    """The data side of a fit: batches of training data, a batch's loss, the validation loss."""

    def batches(self, rng: np.random.Generator) -> Iterable[B]: ...

    def loss(self, model: nn.Module, batch: B) -> torch.Tensor: ...

    def val_loss(self, model: nn.Module) -> float: ...


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 6
    batch_size: int = 2048
    learning_rate: float = 2e-3
    hidden: tuple[int, ...] = (128, 64)
    val_fraction: float = 0.2
    seed: int = 0
    patience: int = 3
    min_delta: float = 0.0
    milestone_every: int = 5
    threads: int = 1  # torch threads while training (FitConfig.threads)
    # The impact model's inputs and regularisation (see ImpactNet and stack_rows)
    inputs: tuple[str, ...] | None = None  # feature names the model reads (None: all)
    dropout: float = 0.2
    weight_decay: float = 1e-4
    frame_stride: int = 4  # train on every n-th live frame (neighbours are near duplicates)
    # Auxiliary targets (services/trainer/targets.py), each weighted by aux_weight against the
    # forecast pair's 1; extra heads that shape the shared layers, left out of forward.
    aux: AuxTargets = field(default_factory=AuxTargets)
    aux_weight: float = 1.0
    # Networks trained from different initial weights on the same split; the model is their
    # mean probability (one ONNX graph). Member i is seeded with member_seed(seed, i).
    members: int = 1
    mirrored: bool = True  # symmetric under the pitch mirrored left-right (ImpactNet)

    def __post_init__(self) -> None:
        if self.members < 1:
            raise ValueError(f"an impact model needs at least one member, got {self.members}")

    @property
    def fit(self) -> FitConfig:
        return FitConfig.of(self)


@dataclass(frozen=True)
class TrainResult:
    model: nn.Module
    metrics: dict[str, float]
    train_replays: list[str]
    val_replays: list[str]
    fit: FitResult | None = None
    data_hash: str = ""
    out_of_scope: list[str] = field(default_factory=list)  # replays left out: shared/scope.py


def weights_digest(model: nn.Module) -> str:
    """8 hex digits of a sha256 over a model's weights: tells trained models apart by name."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:8]


def member_seed(seed: int, member: int) -> int:
    """The weights' seed of an ensemble's member (member 0: ``seed`` itself)."""
    return seed + 1000 * member


class ImpactEnsemble(nn.Module):
    """The mean of its members' probabilities: the forward of one :class:`ImpactNet`."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(features) for member in self.members]).mean(dim=0)


class ImpactNet(nn.Module):
    """MLP from one (frame, player) feature row to P(score), P(concede) within the horizon.

    It takes whole feature rows and itself picks the columns it reads (``inputs``: the
    ball-only baseline reads 6) and standardises them with the training rows' mean and
    deviation, so the exported ONNX graph needs no preprocessing outside it. ``aux_outputs``
    extra logits (the auxiliary targets: services/trainer/targets.py) are trained but neither
    in ``logits`` nor in ``forward``.

    With ``mirrored``, its logits are the mean of the MLP's on the row and on the row mirrored
    left-right (MIRROR_SIGNS): the game's symmetry holds by construction, in training and in
    the exported graph, instead of having to be learnt from data.
    """

    def __init__(
        self,
        n_features: int = N_FEATURES,
        hidden: tuple[int, ...] = (128, 64),
        *,
        inputs: tuple[str, ...] | None = None,
        dropout: float = 0.0,
        mean: np.ndarray | None = None,
        std: np.ndarray | None = None,
        aux_outputs: int = 0,
        mirrored: bool = False,
    ) -> None:
        super().__init__()
        self.mirrored = mirrored
        columns = [FEATURE_NAMES.index(name) for name in inputs] if inputs else range(n_features)
        width = len(columns)
        self.register_buffer("columns", torch.tensor(list(columns), dtype=torch.long))
        self.register_buffer("mean", _buffer(mean, width, 0.0))
        self.register_buffer("std", _buffer(std, width, 1.0))
        self.register_buffer("mirror", torch.from_numpy(MIRROR_SIGNS[list(columns)]))
        layers: list[nn.Module] = []
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            layers += [nn.Dropout(dropout)] if dropout else []
            width = size
        layers.append(nn.Linear(width, 2 + aux_outputs))
        self.mlp = nn.Sequential(*layers)

    def all_logits(self, features: torch.Tensor) -> torch.Tensor:
        """[N, 2 + aux_outputs]: the forecast pair, then the auxiliary targets."""
        chosen = torch.index_select(features, 1, self.columns)
        logits = self.mlp((chosen - self.mean) / self.std)
        if not self.mirrored:
            return logits
        return (logits + self.mlp((chosen * self.mirror - self.mean) / self.std)) / 2

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.all_logits(features)[:, :2]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(features))


MIN_INPUT_STD = 1e-2  # constant columns (team size in a 3v3-only set) are not blown up


def _buffer(values: np.ndarray | None, width: int, default: float) -> torch.Tensor:
    if values is None:
        return torch.full((width,), default)
    return torch.as_tensor(np.asarray(values, dtype=np.float32))


def input_scaling(x_train: np.ndarray, inputs: tuple[str, ...] | None) -> tuple[np.ndarray, ...]:
    """Mean and deviation of the training rows' model inputs."""
    columns = [FEATURE_NAMES.index(n) for n in inputs] if inputs else slice(None)
    chosen = x_train[:, columns].astype(np.float64)
    return chosen.mean(axis=0), np.maximum(chosen.std(axis=0), MIN_INPUT_STD)


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
class _ImpactTask:
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

    def loss(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        losses = nn.functional.binary_cross_entropy_with_logits(
            model.all_logits(self.x_train[batch]), self.y_train[batch], reduction="none"
        )
        return (losses * self.weights).sum(dim=1).mean() / self.weights.sum()

    def val_loss(self, model: nn.Module) -> float:
        total = 0.0
        for start in range(0, len(self.x_val), VAL_CHUNK_ROWS):
            rows = slice(start, start + VAL_CHUNK_ROWS)
            total += nn.functional.binary_cross_entropy_with_logits(
                model.logits(self.x_val[rows]), self.y_val[rows], reduction="sum"
            ).item()
        return total / self.y_val.numel()


def train_impact_model(
    tables: list[FeatureTable],
    config: TrainConfig = TrainConfig(),
    progress: bool = True,
    run_dir: Path | None = None,
) -> TrainResult:
    """Train on those of ``tables`` in the model's scope (Soccar on standard arenas, see
    shared/scope.py), split by file (``config.val_fraction``, ``config.seed``); with
    ``run_dir``, checkpoint there and resume a killed run (an ensemble's members each in
    their own ``member-N`` folder)."""
    scoped, other = scoped_tables(tables)
    train_tables, val_tables = split_by_replay(scoped, config.val_fraction, config.seed)
    result = train_on_split(train_tables, val_tables, config, progress, run_dir)
    return replace(result, out_of_scope=[t.replay_id for t in other])


def train_on_split(
    train_tables: list[FeatureTable],
    val_tables: list[FeatureTable],
    config: TrainConfig = TrainConfig(),
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
    task = _ImpactTask(
        *map(torch.from_numpy, (x_train, y_train, x_val, y_val)), config.batch_size, weights
    )
    mean, std = input_scaling(x_train, config.inputs)
    train_ids, val_ids = [t.replay_id for t in train_tables], [t.replay_id for t in val_tables]
    run = RunInfo("impact", data_hash(train_ids, val_ids))
    nets, fits = [], []
    for member in range(config.members):
        seed = member_seed(config.seed, member)
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


# ---------------------------------------------------------------- the training loop


def data_hash(train_ids: Iterable[str], val_ids: Iterable[str], labels: Iterable[str] = ()) -> str:
    """sha256 over what a model was trained and validated on (replay ids, extra label lines)."""
    lines = sorted([*(f"train {i}" for i in train_ids), *(f"val {i}" for i in val_ids), *labels])
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def fit(
    model: nn.Module,
    task: FitTask[B],
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
    model: nn.Module,
    task: FitTask[B],
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
    model: nn.Module, optimizer: torch.optim.Optimizer, task: FitTask[B], seed: int, epoch: int
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


@dataclass(frozen=True)
class OnnxSignature:
    """Names, an example input and the dynamic axes of a model's one input and one output."""

    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    example_shape: tuple[int, ...] = (1, N_FEATURES)
    dynamic_axes: dict[str, dict[int, str]] = field(
        default_factory=lambda: {INPUT_NAME: {0: "rows"}, OUTPUT_NAME: {0: "rows"}}
    )


def export_onnx(
    model: nn.Module,
    path: Path,
    version: str,
    *,
    kind: str = "impact",
    signature: OnnxSignature = OnnxSignature(),
    metadata: dict[str, str] | None = None,
) -> None:
    """Write ``model`` as ONNX with its version, kind and feature schema in the metadata."""
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(*signature.example_shape),),
            str(path),
            input_names=[signature.input_name],
            output_names=[signature.output_name],
            dynamic_axes=signature.dynamic_axes,
            dynamo=False,
        )
    proto = onnx.load(str(path))
    entries = {
        META_VERSION: version,
        META_SCHEMA: str(FEATURE_SCHEMA_VERSION),
        META_KIND: kind,
        **(metadata or {}),
    }
    for key, value in entries.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def onnx_parity(
    model: nn.Module, path: Path, inputs: np.ndarray, signature: OnnxSignature = OnnxSignature()
) -> float:
    """Largest absolute difference between torch and onnxruntime outputs on ``inputs``."""
    model.eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(inputs)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run([signature.output_name], {signature.input_name: inputs})
    return float(np.max(np.abs(got - expected))) if expected.size else 0.0
