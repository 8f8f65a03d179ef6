"""Skill estimates from a feature table with an ONNX skill model. Pure: no Kafka, no database.

A skill model reads one player's whole replay as a sequence of feature rows (every
``stride``-th frame) and returns a rating on the scale of its training labels (MMR): the graph
outputs a standardized rating, and the label mean and deviation are in the ONNX metadata, as
is the stride, so trainer and scorer always sample alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.features.table import FeatureTable
from shared.model import META_KIND, META_VERSION, ModelSchemaError, load_onnx

SKILL_INPUT = "sequence"
SKILL_OUTPUT = "rating_z"  # standardized: (rating - label mean) / label standard deviation
META_STRIDE = "rlimpact.skill_stride"
META_RATING_MEAN = "rlimpact.rating_mean"
META_RATING_STD = "rlimpact.rating_std"
DEFAULT_STRIDE = 5  # 10 fps features -> 2 rows per second
MAX_Z = 4.0


def player_sequences(table: FeatureTable, stride: int) -> np.ndarray:
    """[P, T', F] float32: each player's feature rows, every ``stride``-th frame."""
    return np.ascontiguousarray(table.features[::stride].transpose(1, 0, 2), dtype=np.float32)


class SkillModel:
    """An ONNX skill model loaded in onnxruntime (CPU)."""

    def __init__(self, path: Path) -> None:
        self._session, meta = load_onnx(path)
        if meta.get(META_KIND) != "skill":
            raise ModelSchemaError(f"{path}: not a skill model (kind {meta.get(META_KIND)!r})")
        self.version = meta.get(META_VERSION, path.stem)
        self.stride = int(meta.get(META_STRIDE, DEFAULT_STRIDE))
        self.rating_mean = float(meta.get(META_RATING_MEAN, "0"))
        self.rating_std = float(meta.get(META_RATING_STD, "1"))

    def predict(self, sequences: np.ndarray) -> np.ndarray:
        """[P, T, F] float32 -> [P] ratings (MMR).

        A rating more than ``MAX_Z`` training deviations from the training mean is clipped
        there: the model has seen no such play, so it cannot say more than "very high/low".
        """
        (standardized,) = self._session.run([SKILL_OUTPUT], {SKILL_INPUT: sequences})
        z = np.clip(standardized.astype(np.float64), -MAX_Z, MAX_Z)
        return z * self.rating_std + self.rating_mean


def estimate_skill(table: FeatureTable, model: SkillModel) -> dict[int, float]:
    """Rating per player index."""
    ratings = model.predict(player_sequences(table, model.stride))
    return {player.index: float(ratings[player.index]) for player in table.players}
