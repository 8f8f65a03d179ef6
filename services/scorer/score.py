"""Impact scores from a feature table with an ONNX model. Pure: no Kafka, no database.

The model outputs, for each (frame, player) row, P(the player's team scores within the
horizon) and P(it concedes within the horizon). A player's impact for a replay is, for now,
the mean over the player's frames of ``100 * (P(score) - P(concede))``: how favourable the
game state was while the player was on the pitch, from the player's own point of view.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from services.featurizer.features import FEATURE_SCHEMA_VERSION, FeatureTable

INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"
META_VERSION = "rlimpact.version"
META_SCHEMA = "rlimpact.feature_schema_version"
IMPACT_SCALE = 100.0


class ModelSchemaError(ValueError):
    """The model was trained on another feature schema than this code produces."""


@dataclass(frozen=True)
class PlayerScore:
    player_index: int
    name: str
    team: int
    impact: float  # offence + defence
    offence: float  # the part from raising P(score)
    defence: float  # the part from lowering P(concede) (positive = good defending)
    n_frames: int


class ImpactModel:
    """An ONNX impact model loaded in onnxruntime (CPU)."""

    def __init__(self, path: Path) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        meta = self._session.get_modelmeta().custom_metadata_map
        self.version = meta.get(META_VERSION, path.stem)
        schema = int(meta.get(META_SCHEMA, "0"))
        if schema != FEATURE_SCHEMA_VERSION:
            raise ModelSchemaError(
                f"{path}: model expects feature schema v{schema}, features are "
                f"v{FEATURE_SCHEMA_VERSION}"
            )

    def predict(self, features: np.ndarray) -> np.ndarray:
        """[N, F] float32 -> [N, 2] probabilities (score, concede)."""
        (probabilities,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: features})
        return probabilities


def score_table(table: FeatureTable, model: ImpactModel) -> list[PlayerScore]:
    n_frames, n_players, n_features = table.features.shape
    probabilities = model.predict(table.features.reshape(-1, n_features))
    offence = IMPACT_SCALE * probabilities[:, 0].reshape(n_frames, n_players).mean(axis=0)
    defence = -IMPACT_SCALE * probabilities[:, 1].reshape(n_frames, n_players).mean(axis=0)
    return [
        PlayerScore(
            player_index=player.index,
            name=player.name,
            team=player.team,
            impact=float(offence[player.index] + defence[player.index]),
            offence=float(offence[player.index]),
            defence=float(defence[player.index]),
            n_frames=n_frames,
        )
        for player in table.players
    ]
