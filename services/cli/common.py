"""Helpers shared by the CLI's command modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from shared.settings import Settings

if TYPE_CHECKING:  # onnxruntime is loaded only by the commands that score
    from services.scorer.score import ImpactModel

DEFAULT_MODEL_FILE = "impact.onnx"


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
    from services.scorer.score import ImpactModel, ModelSchemaError

    model_path = path or settings.default_model_dir / DEFAULT_MODEL_FILE
    if not model_path.exists():
        raise SystemExit(f"rlimpact: no model at {model_path}: train one with 'rlimpact train'")
    try:
        return ImpactModel(model_path)
    except ModelSchemaError as error:
        raise SystemExit(f"rlimpact: {error}; retrain it ('rlimpact train --local')") from None
