"""Training configurations, without torch: the CLI reads the recipe's defaults at start-up.

:class:`FitConfig` is how the training loop (services/trainer/fit.py) runs, whatever the model;
:class:`TrainConfig` is the impact model's recipe, its fit settings nested.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Self

from services.trainer.targets import AuxTargets


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


# The impact model's fit settings when nothing else is asked for
IMPACT_FIT = FitConfig(epochs=6, learning_rate=2e-3, weight_decay=1e-4)


class FitsWith:
    """A model's config whose fit settings are its ``fit`` field."""

    fit: FitConfig

    def with_fit(self, **changes: Any) -> Self:
        """This config with some of its fit settings changed (epochs, seed, ...)."""
        return replace(self, fit=replace(self.fit, **changes))  # type: ignore[type-var]


@dataclass(frozen=True)
class TrainConfig(FitsWith):
    """The impact model's recipe: how :func:`fit` runs (``fit``) and what it fits."""

    fit: FitConfig = IMPACT_FIT
    batch_size: int = 2048
    hidden: tuple[int, ...] = (128, 64)
    val_fraction: float = 0.2  # the split by file is drawn from fit.seed
    # The impact model's inputs and regularisation (see ImpactNet and stack_rows)
    inputs: tuple[str, ...] | None = None  # feature names the model reads (None: all)
    dropout: float = 0.2
    frame_stride: int = 4  # train on every n-th live frame (neighbours are near duplicates)
    # Auxiliary targets (services/trainer/targets.py), each weighted by aux_weight against the
    # forecast pair's 1; extra heads that shape the shared layers, left out of forward.
    aux: AuxTargets = field(default_factory=AuxTargets)
    aux_weight: float = 1.0
    # Networks trained from different initial weights on the same split; the model is their
    # mean probability (one ONNX graph). Member i is seeded with member_seed(fit.seed, i).
    members: int = 1
    mirrored: bool = True  # symmetric under the pitch mirrored left-right (ImpactNet)

    def __post_init__(self) -> None:
        if self.members < 1:
            raise ValueError(f"an impact model needs at least one member, got {self.members}")


# The shipped model's recipe (models/default/impact.onnx, README "The shipped model"): the
# trainer service, `rlimpact train --local` and `rlimpact crossval` all default to it.
SHIPPED_RECIPE = TrainConfig(fit=replace(IMPACT_FIT, epochs=8), members=3)
