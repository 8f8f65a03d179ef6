"""The impact model's training recipe against the ball-only baseline's, on every replay.

``rlimpact evaluate`` judges one trained model on the replays its split held out: 31 matches
of the corpus, which also chose its early-stopping epoch. :func:`cross_validate` judges the
recipe instead: the in-scope replays are dealt into k folds by file, and for each fold both
recipes are trained afresh on the other folds (early stopping on a share of those, never on
the fold) and forecast the fold. Every replay is then held out exactly once, and the
forecasts of all folds are scored together.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from services.trainer.config import IMPACT_FIT, TrainConfig
from services.trainer.data import scoped_tables, shuffled_by_replay, split_by_replay
from services.trainer.evaluate import BALL_INPUTS, TeamForecasts, TorchPredictor, forecasts
from services.trainer.train import train_on_split
from shared.features.table import FeatureTable

MODEL = "model"
BASELINE = "ball-only"


def baseline_config(epochs: int, seed: int, val_fraction: float) -> TrainConfig:
    """The ball-only baseline: the impact network's trainer, reading BALL_INPUTS only."""
    return TrainConfig(
        fit=replace(IMPACT_FIT, epochs=epochs, seed=seed, milestone_every=0),
        val_fraction=val_fraction,
        inputs=BALL_INPUTS,
        hidden=(64, 64),
    )


def replay_folds(tables: list[FeatureTable], folds: int, seed: int) -> list[list[FeatureTable]]:
    """``tables`` dealt into ``folds`` folds of sizes within one of each other, by file."""
    if not 2 <= folds <= len(tables):
        raise ValueError(f"cannot deal {len(tables)} replays into {folds} folds (2 or more)")
    ranked = shuffled_by_replay(tables, seed)
    return [ranked[fold::folds] for fold in range(folds)]


def fold_splits(
    scoped: list[FeatureTable], folds: int, config: TrainConfig
) -> Iterator[tuple[list[FeatureTable], list[FeatureTable], list[FeatureTable]]]:
    """Per fold of ``scoped`` (dealt by ``config.fit.seed``): (held out, training, early-stopping)
    replays, the last two split from the other folds by ``config.val_fraction``."""
    for held_out in replay_folds(scoped, folds, config.fit.seed):
        ids = {t.replay_id for t in held_out}
        rest = [t for t in scoped if t.replay_id not in ids]
        train, val = split_by_replay(rest, config.val_fraction, config.fit.seed)
        yield held_out, train, val


def out_of_fold_models(
    tables: list[FeatureTable],
    config: TrainConfig,
    folds: int,
    on_fold: Callable[[], None] | None = None,
) -> dict[str, TorchPredictor]:
    """Replay id -> the recipe ``config`` trained without that replay's fold, for each in-scope
    replay: forecasts of matches the model never saw, whichever replay it is."""
    scoped, _ = scoped_tables(tables)
    models: dict[str, TorchPredictor] = {}
    for held_out, train, val in fold_splits(scoped, folds, config):
        predictor = TorchPredictor(train_on_split(train, val, config, progress=False).model)
        models.update({t.replay_id: predictor for t in held_out})
        if on_fold is not None:
            on_fold()
    return models


@dataclass(frozen=True)
class Fold:
    held_out: list[str]  # replay ids
    trained_on: list[str]
    stopped_on: list[str]  # early stopping's validation replays
    results: dict[str, TeamForecasts]  # per recipe, on the held-out replays


@dataclass(frozen=True)
class CrossValidation:
    folds: list[Fold]
    out_of_scope: list[str]

    @property
    def pooled(self) -> dict[str, TeamForecasts]:
        """Per recipe, the forecasts of every fold's held-out replays together."""
        names = self.folds[0].results
        return {name: TeamForecasts.concat([f.results[name] for f in self.folds]) for name in names}


def cross_validate(
    tables: list[FeatureTable],
    model: TrainConfig,
    baseline: TrainConfig,
    folds: int = 5,
    on_fold: Callable[[Fold], None] | None = None,
    train_share: float = 1.0,
) -> CrossValidation:
    """Both recipes trained and forecast on each of ``folds`` folds of the in-scope replays
    (dealt by ``model.fit.seed``); ``on_fold`` hears of each fold when it is done. With
    ``train_share`` below 1, each fold trains on that share of its training replays only (the
    same validation and held-out replays): what the recipe makes of less data."""
    if not 0 < train_share <= 1:
        raise ValueError(f"the share of training replays must be in (0, 1], got {train_share}")
    scoped, other = scoped_tables(tables)
    done = []
    for held_out, train, val in fold_splits(scoped, folds, model):
        ids = {t.replay_id for t in held_out}
        if train_share < 1:
            train = shuffled_by_replay(train, model.fit.seed)[
                : max(1, round(train_share * len(train)))
            ]
        results = {}
        for name, config in ((MODEL, model), (BASELINE, baseline)):
            trained = train_on_split(train, val, config, progress=False)
            results[name] = forecasts(held_out, TorchPredictor(trained.model))
        fold = Fold(
            held_out=sorted(ids),
            trained_on=sorted(t.replay_id for t in train),
            stopped_on=sorted(t.replay_id for t in val),
            results=results,
        )
        done.append(fold)
        if on_fold is not None:
            on_fold(fold)
    return CrossValidation(done, sorted(t.replay_id for t in other))
