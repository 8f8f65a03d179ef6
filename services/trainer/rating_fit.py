"""Fitting the rating's weights (:mod:`shared.rating`) on matches cut in parts, and rating
each match with weights fitted without it (cross-fitting). Pure numpy, no I/O.

The target is the one ``rlimpact validate`` judges the rating by, so a weight fitted on a
match would flatter the rating on that match: ``rlimpact validate`` reports impact with each
match rated by weights fitted on the other folds (:func:`cross_fitted`).

The fit is a search over a small grid of weights (the threat's weight fixed at 1): on the
training matches, the weights that maximise the smaller of two margins, the rating's
predictive validity over the best simple baseline's (the worst of the three splits) and its
split-half reliability within team size over touches per minute's: the two targets set for
the rating (issue 17). Then one scale, by least squares, makes a team's edge in impact per
minute (/100) its forecast of its later goal difference per minute.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from services.trainer.statistics import Statistic, Unit, joined
from services.trainer.validity import (
    MatchParts,
    prediction_statistic,
    prediction_units,
    split_half_statistic,
    split_half_units,
)
from shared.impact import IMPACT_SCALE
from shared.rating import RatingWeights

GRID = {
    "change": (0.4, 1.1, 1.7, 2.6),
    "held": (0.0, 2.0, 4.0),
    "touch": (0.08, 0.13, 0.18, 0.23),
}
BASELINES = ("touches", "mean P(score)", "goal difference")
SPLITS = ((1, 2), (1, 4), (3, 4))  # (earlier parts, of parts): halves, first 1/4, first 3/4
FOLDS = 10


def weighted_totals(match: MatchParts, weights: RatingWeights) -> MatchParts:
    """``match`` with its impact, offence and defence totals made from its touches' parts."""
    t = match.player_totals
    offence = weights.scale * (
        t["threat_for"]
        + weights.change * t["change_for"]
        + weights.held * t["held_for"]
        + IMPACT_SCALE * weights.touch * t["touches"]
    )
    defence = weights.scale * (t["threat_against"] + weights.change * t["change_against"])
    totals = {**t, "offence": offence, "defence": defence, "impact": offence + defence}
    return replace(match, player_totals=totals)


@dataclass(frozen=True)
class Margins:
    prediction: float  # impact's Spearman minus the best baseline's, at the worst split
    reliability: float  # impact's split-half r minus touches per minute's

    @property
    def smaller(self) -> float:
        return min(self.prediction, self.reliability)


def margins(by_parts: dict[int, Sequence[MatchParts]]) -> Margins:
    """Point estimates of both margins; ``by_parts`` maps 2 and 4 to the matches so cut."""
    halves = split_half_units(by_parts[2], ("impact", "touches"))
    reliability = _on_all(halves, split_half_statistic("impact")) - _on_all(
        halves, split_half_statistic("touches")
    )
    prediction = np.inf
    for split, n_parts in SPLITS:
        units = prediction_units(by_parts[n_parts], ("impact", *BASELINES), split)
        best = max(_on_all(units, prediction_statistic(b)) for b in BASELINES)
        prediction = min(prediction, _on_all(units, prediction_statistic("impact")) - best)
    return Margins(float(prediction), float(reliability))


def _on_all(units: list[Unit], statistic: Statistic) -> float:
    return statistic(joined(units, np.arange(len(units))))


def candidates() -> list[RatingWeights]:
    return [
        RatingWeights(change=c, held=h, touch=t)
        for c, h, t in itertools.product(GRID["change"], GRID["held"], GRID["touch"])
    ]


def fit_rating(by_parts: dict[int, Sequence[MatchParts]]) -> tuple[RatingWeights, Margins]:
    """The grid's weights with the largest smaller margin on these matches, scaled to goals."""
    scored = []
    for weights in candidates():
        rated = {n: [weighted_totals(m, weights) for m in ms] for n, ms in by_parts.items()}
        scored.append((margins(rated).smaller, weights, rated))
    _, best, rated = max(scored, key=lambda s: s[0])
    fitted = best.scaled(goal_scale(rated))
    return fitted, margins(
        {n: [weighted_totals(m, fitted) for m in ms] for n, ms in by_parts.items()}
    )


def goal_scale(by_parts: dict[int, Sequence[MatchParts]]) -> float:
    """The least-squares factor from a team's impact edge per minute (/100) over the earlier
    parts to its goal difference per minute over the later ones, over every split."""
    edges, later = [], []
    for split, n_parts in SPLITS:
        for match in by_parts[n_parts]:
            before, after = slice(0, split), slice(split, None)
            edges.append(match.team_edge("impact", before) / IMPACT_SCALE)
            later.append(
                match.team_edge("goal difference", after) / max(match.minutes[after].sum(), 1e-9)
            )
    x, y = np.array(edges), np.array(later)
    return float((x * y).sum() / (x * x).sum()) if (x * x).sum() > 0 else 1.0


def fold_of(match_ids: Sequence[str], folds: int = FOLDS) -> np.ndarray:
    """[M] each match's fold, dealt in the order of the ids (sha256s: a fixed shuffle)."""
    order = np.argsort(np.array(match_ids), kind="stable")
    fold = np.zeros(len(match_ids), dtype=np.int64)
    fold[order] = np.arange(len(match_ids)) % folds
    return fold


def cross_fitted(
    by_parts: dict[int, Sequence[MatchParts]], folds: int = FOLDS
) -> tuple[dict[int, list[MatchParts]], list[RatingWeights]]:
    """Every match rated with the weights :func:`fit_rating` finds on the other folds; the
    matches in each cut are the same, in the same order. Also the weights of each fold.

    Each fold's weights keep the scale of the first fold's: the measures (correlations over
    all matches) do not depend on a scale common to every match, but would mix the folds'
    units if each kept its own."""
    ids = [m.match_id for m in by_parts[2]]
    fold = fold_of(ids, folds)
    rated: dict[int, list[MatchParts]] = {n: list(ms) for n, ms in by_parts.items()}
    fitted: list[RatingWeights] = []
    for k in range(folds):
        train = {
            n: [m for m, f in zip(ms, fold, strict=True) if f != k] for n, ms in by_parts.items()
        }
        weights, _ = fit_rating(train)
        fitted.append(weights.scaled(fitted[0].scale) if fitted else weights)
        for n, ms in by_parts.items():
            for i in np.flatnonzero(fold == k):
                rated[n][i] = weighted_totals(ms[i], fitted[-1])
    return rated, fitted
