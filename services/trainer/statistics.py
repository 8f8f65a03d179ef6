"""Statistics for rating validity: rank correlations, per-group standardisation, and
intervals by resampling whole units (matches, players) with replacement. Pure numpy."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

ROUNDS = 1000
LEVEL = 0.95


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2.0)[inverse]


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 3:
        return float("nan")
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator > 0 else float("nan")


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(ranks(x), ranks(y)) if x.size >= 3 else float("nan")


def standardised(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``values`` z-scored within each group (a group with no spread gives zeros)."""
    result = np.zeros(values.shape)
    for group in np.unique(groups):
        chosen = groups == group
        spread = values[chosen].std()
        result[chosen] = (values[chosen] - values[chosen].mean()) / spread if spread > 0 else 0.0
    return result


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    n: int  # observations the value rests on (pairs of halves, matches, players)

    def as_json(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n}

    def __str__(self) -> str:
        return f"{self.value:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


# Observations of one unit of resampling (a match, a player): named arrays of equal length
Unit = dict[str, np.ndarray]
Statistic = Callable[[Unit], float]


def joined(units: Sequence[Unit], chosen: np.ndarray) -> Unit:
    names = units[0].keys() if units else ()
    return {name: np.concatenate([units[i][name] for i in chosen]) for name in names}


def bootstrap(
    units: Sequence[Unit],
    statistics: dict[str, Statistic],
    rounds: int = ROUNDS,
    seed: int = 0,
    count: str | None = None,
) -> dict[str, Estimate]:
    """Each statistic on all ``units`` together, with the middle LEVEL of its values over
    ``rounds`` resamples of the units with replacement (the same draws for every statistic,
    so that their differences can be compared draw by draw; see :func:`differences`)."""
    draws = bootstrap_draws(units, statistics, rounds, seed)
    every = joined(units, np.arange(len(units)))
    n = int(every[count].size) if count and units else len(units)
    return {
        name: estimate(statistic(every) if units else float("nan"), draws[name], n)
        for name, statistic in statistics.items()
    }


def bootstrap_draws(
    units: Sequence[Unit], statistics: dict[str, Statistic], rounds: int, seed: int
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {name: [] for name in statistics}
    for _ in range(rounds if len(units) >= 2 else 0):
        sample = joined(units, rng.integers(0, len(units), len(units)))
        for name, statistic in statistics.items():
            values[name].append(statistic(sample))
    return {name: np.array(v) for name, v in values.items()}


def estimate(value: float, draws: np.ndarray, n: int) -> Estimate:
    draws = draws[~np.isnan(draws)]
    if not draws.size:
        return Estimate(value, float("nan"), float("nan"), n)
    tail = (1 - LEVEL) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return Estimate(value, float(low), float(high), n)


def differences(
    units: Sequence[Unit],
    statistics: dict[str, Statistic],
    first: str,
    rounds: int = ROUNDS,
    seed: int = 0,
) -> dict[str, Estimate]:
    """``first``'s statistic minus each other's, with intervals over the same draws."""
    draws = bootstrap_draws(units, statistics, rounds, seed)
    every = joined(units, np.arange(len(units))) if units else {}
    result = {}
    for name, statistic in statistics.items():
        if name == first or not units:
            continue
        value = statistics[first](every) - statistic(every)
        result[f"{first} - {name}"] = estimate(value, draws[first] - draws[name], len(units))
    return result
