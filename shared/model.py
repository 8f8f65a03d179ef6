"""The ONNX model contract: the graph's input and output names, the metadata keys, loading a
model checked against the feature schema, and the impact model as a :class:`Predictor`.
Shared by the scorer, the live service and the trainer (which writes what this reads).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from shared.features.table import FEATURE_SCHEMA_VERSION, FeatureTable

if TYPE_CHECKING:  # loaded by load_onnx: importing the contract (the CLI does) stays cheap
    import onnxruntime as ort

INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"
META_VERSION = "rlimpact.version"
META_SCHEMA = "rlimpact.feature_schema_version"
DEFAULT_MODEL_FILE = "impact.onnx"  # the shipped model's file in Settings.default_model_dir
META_KIND = "rlimpact.kind"  # "skill" for a skill model; absent for an impact model
# The replays a model was trained and early-stopped on (JSON lists of replay ids); a model
# exported before they were recorded (the shipped one) has neither
META_TRAIN_REPLAYS = "rlimpact.train_replays"
META_VAL_REPLAYS = "rlimpact.val_replays"


class ModelSchemaError(ValueError):
    """The model was trained on another feature schema than this code produces."""


def load_onnx(path: Path) -> tuple[ort.InferenceSession, dict[str, str]]:
    """A one-thread CPU session and the model's metadata, checked against our feature schema."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    meta = session.get_modelmeta().custom_metadata_map
    schema = int(meta.get(META_SCHEMA, "0"))
    if schema != FEATURE_SCHEMA_VERSION:
        raise ModelSchemaError(
            f"{path}: model expects feature schema v{schema}, features are "
            f"v{FEATURE_SCHEMA_VERSION}"
        )
    return session, meta


class Predictor(Protocol):
    def predict(self, features: np.ndarray) -> np.ndarray:
        """[N, F] float32 -> [N, 2] (P(score), P(concede)) per feature row."""
        ...


class ImpactModel:
    """An ONNX impact model loaded in onnxruntime (CPU): a :class:`Predictor`."""

    def __init__(self, path: Path) -> None:
        self._session, meta = load_onnx(path)
        self.version = meta.get(META_VERSION, path.stem)
        self.split = recorded_split(meta)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """[N, F] float32 -> [N, 2] probabilities (score, concede)."""
        (probabilities,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: features})
        return probabilities


@dataclass(frozen=True)
class RecordedSplit:
    """The replays a model was trained on and those it held out for early stopping."""

    train_replays: frozenset[str]
    val_replays: frozenset[str]


def split_metadata(train_replays: Iterable[str], val_replays: Iterable[str]) -> dict[str, str]:
    """ONNX metadata entries that record a model's split (see :func:`recorded_split`)."""
    return {
        META_TRAIN_REPLAYS: json.dumps(sorted(train_replays)),
        META_VAL_REPLAYS: json.dumps(sorted(val_replays)),
    }


def recorded_split(meta: dict[str, str]) -> RecordedSplit | None:
    """The split a model's metadata records, None for a model that records none."""
    if META_TRAIN_REPLAYS not in meta:
        return None
    return RecordedSplit(
        frozenset(json.loads(meta[META_TRAIN_REPLAYS])),
        frozenset(json.loads(meta.get(META_VAL_REPLAYS, "[]"))),
    )


def predict_table(table: FeatureTable, model: Predictor) -> np.ndarray:
    """[T, P, 2] per-row probabilities (P(player's team scores), P(it concedes))."""
    n_frames, n_players, n_features = table.features.shape
    rows = np.ascontiguousarray(table.features.reshape(-1, n_features), dtype=np.float32)
    return model.predict(rows).reshape(n_frames, n_players, 2)
