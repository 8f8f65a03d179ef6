"""The impact network: a mirrored MLP on scaled inputs, an ensemble of them, its weights' digest."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from shared.features.table import (
    FEATURE_NAMES,
    MIRROR_SIGNS,
    N_FEATURES,
)


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

    def __init__(self, members: Sequence[nn.Module]) -> None:
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

    # buffers (register_buffer): the columns read, their scaling, their mirror signs
    columns: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    mirror: torch.Tensor

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
