"""Fitting the rating's weights (:mod:`shared.rating`) on matches cut in parts, and rating
each match with weights fitted without it (cross-fitting). Pure numpy, no I/O.

The target is the one ``rlimpact validate`` judges the rating by, so weights fitted on a match
would flatter the rating on that match: ``rlimpact validate`` reports impact with each match
rated by weights fitted on the other folds of matches (:func:`cross_fitted`; 10 folds by
default, ``--rating-folds``, 0 leaving one match out). Weights that differ between folds give
the folds' matches different levels of impact, a spread that repeats in both halves of a
match: it flatters split-half reliability a little (leaving one match out, the weights differ
least, but a choice among a grid that flips with the match left out then costs the forecast).

The fit is a search over a small grid of weights (the threat's weight fixed at 1, pace's at
4): on the training matches, the weights that maximise the smaller of two margins, the
rating's predictive validity over the best simple baseline's (at the worst of three splits) and its
split-half reliability within team size over touches per minute's, the two targets set for
the rating (issue 17); the same statistics as :mod:`services.trainer.validity`, on arrays
made once (:class:`Design`), so that a fit is a matter of milliseconds. Then one scale, by
least squares, makes a team's edge in impact per minute (/100) its forecast of its later goal
difference per minute.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from services.trainer.statistics import pearson, spearman, standardised
from services.trainer.validity import PACE_TOTAL, MatchParts
from shared.impact import IMPACT_SCALE, pace_credit
from shared.rating import RatingWeights

GRID = {
    "change": (0.4, 1.1, 1.7, 2.6),
    "held": (0.0, 2.0, 4.0),
    "touch": (0.08, 0.13, 0.18, 0.23),
    # Fixed, not searched: with pace in the grid (PACE_SEARCH), folds chose among many
    # near-equal weights and the cross-fitted forecast lost to the mean P(score) edge after
    # three quarters; fixed anywhere from 3 to 6 it is ahead at every split (README, *Impact*;
    # `rlimpact validate --pace-weight W|search`).
    "pace": (4.0,),
}
PACE_SEARCH = (0.0, 1.0, 2.0, 3.0, 4.0)
BASELINES = ("touches", "mean P(score)", "goal difference")
SPLITS = ((1, 2), (1, 4), (3, 4))  # (earlier parts, of parts): halves, first 1/4, first 3/4
FOLDS = 10
# A player's totals per part that the rating is linear in: impact before its scale is
# threat + change x w.change + held x w.held + touches x IMPACT_SCALE x w.touch + pace x w.pace
COLUMNS = ("threat", "change", "held", "touches", "pace")


def columns(match: MatchParts) -> np.ndarray:
    """[C, K, P] the totals of COLUMNS per part and player."""
    t = match.player_totals
    return np.stack(
        [
            t["threat_for"] + t["threat_against"],
            t["change_for"] + t["change_against"],
            t["held_for"],
            IMPACT_SCALE * t["touches"],
            t[PACE_TOTAL],
        ]
    )


def vector(weights: RatingWeights) -> np.ndarray:
    return np.array([1.0, weights.change, weights.held, weights.touch, weights.pace])


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
    pace = pace_credit(t[PACE_TOTAL] / IMPACT_SCALE, weights)
    totals = {
        **t,
        "offence": offence,
        "defence": defence,
        "pace": pace,
        "impact": offence + defence + pace,
    }
    return replace(match, player_totals=totals)


@dataclass(frozen=True)
class Margins:
    prediction: float  # impact's Spearman minus the best baseline's, at the worst split
    reliability: float  # impact's split-half r minus touches per minute's

    @property
    def smaller(self) -> float:
        return min(self.prediction, self.reliability)


@dataclass(frozen=True)
class Forecasts:
    """One split: per match, the team edges over the earlier parts and the goal difference
    over the later ones (team 0's side; the statistics add team 1's)."""

    edges: np.ndarray  # [M, C] per minute, of COLUMNS
    baselines: np.ndarray  # [M, len(BASELINES)]
    later: np.ndarray  # [M] goal difference
    later_minutes: np.ndarray  # [M]


@dataclass(frozen=True)
class Design:
    """What the statistics of :mod:`services.trainer.validity` need, as arrays, for any
    weights: players in both halves (split-half reliability) and each split's edges."""

    first: np.ndarray  # [N, C] per-minute COLUMNS in the first half, players in both halves
    second: np.ndarray  # [N, C]
    touches: np.ndarray  # [N, 2] touches per minute in each half
    sizes: np.ndarray  # [N] team size
    player_match: np.ndarray  # [N] the player's match
    forecasts: tuple[Forecasts, ...]  # one per SPLITS

    @property
    def n_matches(self) -> int:
        return int(self.forecasts[0].later.shape[0])


def design(by_parts: Mapping[int, Sequence[MatchParts]]) -> Design:
    """``by_parts`` maps 2 and 4 to the same matches, in the same order, so cut."""
    first, second, touches, sizes, owner = [], [], [], [], []
    for i, match in enumerate(by_parts[2]):
        both = match.present.all(axis=0)
        rates = columns(match) / np.maximum(match.minutes, 1e-9)[None, :, None]
        first.append(rates[:, 0, both].T)
        second.append(rates[:, 1, both].T)
        touches.append(np.stack([match.rates("touches", slice(k, k + 1))[both] for k in (0, 1)], 1))
        sizes.append(np.full(int(both.sum()), match.team_size))
        owner.append(np.full(int(both.sum()), i))
    return Design(
        first=np.concatenate(first),
        second=np.concatenate(second),
        touches=np.concatenate(touches),
        sizes=np.concatenate(sizes),
        player_match=np.concatenate(owner),
        forecasts=tuple(_forecasts(by_parts[n], split) for split, n in SPLITS),
    )


def _forecasts(matches: Sequence[MatchParts], split: int) -> Forecasts:
    before, after = slice(0, split), slice(split, None)
    edges, baselines, later, minutes = [], [], [], []
    for match in matches:
        rates = columns(match)[:, before].sum(axis=1) / max(match.minutes[before].sum(), 1e-9)
        edges.append(rates[:, match.teams == 0].sum(axis=1) - rates[:, match.teams == 1].sum(1))
        baselines.append([match.team_edge(b, before) for b in BASELINES])
        later.append(match.team_edge("goal difference", after))
        minutes.append(match.minutes[after].sum())
    return Forecasts(np.array(edges), np.array(baselines), np.array(later), np.array(minutes))


def _both_sides(values: np.ndarray) -> np.ndarray:
    return np.concatenate([values, -values])


def margins(d: Design, w: np.ndarray, chosen: np.ndarray | None = None) -> Margins:
    """Both margins for the weights ``w`` (of COLUMNS) over the ``chosen`` matches [M] bool."""
    chosen = np.ones(d.n_matches, dtype=bool) if chosen is None else chosen
    players = chosen[d.player_match]
    sizes = d.sizes[players]

    def split_half(first: np.ndarray, second: np.ndarray) -> float:
        return pearson(standardised(first, sizes), standardised(second, sizes))

    reliability = split_half(d.first[players] @ w, d.second[players] @ w) - split_half(
        d.touches[players, 0], d.touches[players, 1]
    )
    prediction = np.inf
    for f in d.forecasts:
        later = _both_sides(f.later[chosen])
        best = max(spearman(_both_sides(b), later) for b in f.baselines[chosen].T)
        impact = spearman(_both_sides(f.edges[chosen] @ w), later)
        prediction = min(prediction, impact - best)
    return Margins(float(prediction), float(reliability))


def candidates(pace: Sequence[float] = GRID["pace"]) -> list[RatingWeights]:
    """The grid, with ``pace`` the pace weights to search (GRID's: the fixed one)."""
    return [
        RatingWeights(change=c, held=h, touch=t, pace=p)
        for c, h, t, p in itertools.product(GRID["change"], GRID["held"], GRID["touch"], pace)
    ]


def fit_design(
    d: Design, chosen: np.ndarray | None = None, pace: Sequence[float] = GRID["pace"]
) -> tuple[RatingWeights, Margins]:
    """The grid's weights with the largest smaller margin on the ``chosen`` matches, scaled
    to goals, and their margins there."""
    chosen = np.ones(d.n_matches, dtype=bool) if chosen is None else chosen
    best = max(candidates(pace), key=lambda w: margins(d, vector(w), chosen).smaller)
    fitted = best.scaled(goal_scale(d, vector(best), chosen))
    return fitted, margins(d, vector(fitted) * fitted.scale, chosen)


def fit_rating(
    by_parts: Mapping[int, Sequence[MatchParts]], pace: Sequence[float] = GRID["pace"]
) -> tuple[RatingWeights, Margins]:
    """:func:`fit_design` on every match."""
    return fit_design(design(by_parts), pace=pace)


def goal_scale(d: Design, w: np.ndarray, chosen: np.ndarray) -> float:
    """The least-squares factor from a team's impact edge per minute (/100) over the earlier
    parts to its goal difference per minute over the later ones, over every split."""
    x = np.concatenate([f.edges[chosen] @ w / IMPACT_SCALE for f in d.forecasts])
    y = np.concatenate(
        [f.later[chosen] / np.maximum(f.later_minutes[chosen], 1e-9) for f in d.forecasts]
    )
    return float((x * y).sum() / (x * x).sum()) if (x * x).sum() > 0 else 1.0


def fold_of(match_ids: Sequence[str], folds: int | None) -> np.ndarray:
    """[M] each match's fold, dealt in the order of the ids (sha256s: a fixed shuffle);
    ``folds`` None: a fold per match (leave one out)."""
    order = np.argsort(np.array(match_ids), kind="stable")
    fold = np.zeros(len(match_ids), dtype=np.int64)
    fold[order] = np.arange(len(match_ids)) % (folds or max(len(match_ids), 1))
    return fold


def cross_fitted(
    by_parts: Mapping[int, Sequence[MatchParts]],
    folds: int | None = FOLDS,
    pace: Sequence[float] = GRID["pace"],
) -> tuple[dict[int, list[MatchParts]], list[RatingWeights]]:
    """Every match rated with the weights :func:`fit_design` finds on the other folds (None:
    on all the other matches), and the weights of each fold, all at the first fold's scale:
    the statistics do not depend on a scale common to every match, but would mix the folds'
    units if each kept its own. The matches of each cut are in the order of ``by_parts[2]``."""
    d = design(by_parts)
    fold = fold_of([m.match_id for m in by_parts[2]], folds)
    rated: dict[int, list[MatchParts]] = {n: list(ms) for n, ms in by_parts.items()}
    fitted: list[RatingWeights] = []
    for k in range(int(fold.max()) + 1 if fold.size else 0):
        weights, _ = fit_design(d, fold != k, pace)
        fitted.append(weights.scaled(fitted[0].scale) if fitted else weights)
        for n, ms in by_parts.items():
            for i in np.flatnonzero(fold == k).tolist():
                rated[n][i] = weighted_totals(ms[i], fitted[-1])
    return rated, fitted
