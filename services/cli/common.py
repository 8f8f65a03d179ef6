"""Helpers shared by the CLI's command modules."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from shared.model import DEFAULT_MODEL_FILE
from shared.settings import Settings

if TYPE_CHECKING:  # onnxruntime and torch are loaded only by the commands that need them
    from services.trainer.config import TrainConfig
    from shared.model import ImpactModel


def replay_files(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(path.rglob("*.replay"))
        elif path.exists():
            yield path
        else:
            raise SystemExit(f"rlimpact: no such file or folder: {path}")


def load_impact_model(path: Path | None, settings: Settings) -> ImpactModel:
    """The model at ``path`` (default: the shipped one), or a clear error and exit."""
    from shared.model import ImpactModel, ModelSchemaError

    model_path = path or settings.default_model_dir / DEFAULT_MODEL_FILE
    if not model_path.exists():
        raise SystemExit(f"rlimpact: no model at {model_path}: train one with 'rlimpact train'")
    try:
        return ImpactModel(model_path)
    except ModelSchemaError as error:
        raise SystemExit(f"rlimpact: {error}; retrain it ('rlimpact train --local')") from None


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """The impact model's training recipe on the command line (see :func:`recipe_config`),
    each option defaulting to the shipped model's recipe."""
    from services.trainer.config import SHIPPED_RECIPE as shipped

    parser.add_argument("--epochs", type=int, default=shipped.fit.epochs)
    parser.add_argument(
        "--seed", type=int, default=shipped.fit.seed, help="seeds the weights and the split"
    )
    parser.add_argument(
        "--members", type=int, default=shipped.members,
        help="networks averaged in the model (an ensemble), each seeded apart",
    )  # fmt: skip
    parser.add_argument(
        "--val-fraction", type=fraction, default=shipped.val_fraction,
        help="share of the training replays held out (by file) for early stopping",
    )  # fmt: skip


def fraction(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1."""
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def recipe_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of :func:`add_recipe_arguments`' options, or a clear error and exit."""
    from dataclasses import replace

    from services.trainer.config import SHIPPED_RECIPE

    try:
        recipe = replace(SHIPPED_RECIPE, val_fraction=args.val_fraction, members=args.members)
        return recipe.with_fit(epochs=args.epochs, seed=args.seed)
    except ValueError as error:
        raise SystemExit(f"rlimpact: --members: {error}") from None
