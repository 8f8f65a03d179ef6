"""The rating's weights: weighed the same from a match's parts as from its touches, fitted to
what forecasts later goals, and cross-fitted without the match they rate."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest

from services.parser.parse import parse_replay_file
from services.trainer.rating_fit import (
    BASELINES,
    FOLDS,
    GRID,
    PACE_SEARCH,
    SPLITS,
    cross_fitted,
    design,
    fit_rating,
    fold_of,
    margins,
    vector,
    weighted_totals,
)
from services.trainer.validity import (
    PACE_TOTAL,
    PART_TOTALS,
    MatchParts,
    match_parts,
    predictive_validity,
    split_half_reliability,
)
from shared.features.batch import featurize
from shared.impact import credit_touches
from shared.rating import SHIPPED_WEIGHTS, RatingWeights
from tests.unit.test_cli import _cli


def test_a_matchs_parts_weigh_into_the_impact_its_touches_were_credited(standard_replay):
    table = featurize(parse_replay_file(standard_replay.path, standard_replay.sha256))
    rng = np.random.default_rng(0)
    p_score = rng.uniform(0.01, 0.6, (table.time.shape[0], 2))
    other = RatingWeights(change=2.0, held=1.0, touch=0.1, pace=2.5, scale=0.3)
    for weights in (SHIPPED_WEIGHTS, other):
        credits = credit_touches(table, p_score, weights=weights)
        parts = match_parts(table, p_score, credits, 4, weights=weights)
        rated = weighted_totals(replace(parts, player_totals=dict(parts.player_totals)), weights)
        for name in ("impact", "offence", "defence", "pace"):
            assert rated.player_totals[name] == pytest.approx(parts.player_totals[name])


def _matches(rng: np.random.Generator, n: int, n_parts: int) -> list[MatchParts]:
    """2v2 matches whose later goals follow the first part's change edge: the change is the
    informative part, the threat and the held value are noise, touches steady per player."""
    matches = []
    for m in range(n):
        teams = np.repeat([0, 1], 2)
        zero = np.zeros((n_parts, 4))
        totals = {name: zero.copy() for name in PART_TOTALS}
        totals["change_for"] = rng.normal(0, 30, (n_parts, 4))
        totals["threat_for"] = rng.normal(0, 30, (n_parts, 4))
        totals["held_for"] = rng.normal(0, 3, (n_parts, 4))
        totals["touches"] = rng.poisson(rng.uniform(5, 15, 4), (n_parts, 4)).astype(float)
        edge = totals["change_for"][0, :2].sum() - totals["change_for"][0, 2:].sum()
        rate = np.clip(1.0 + np.array([edge, -edge]) / 40, 0.05, None)
        goals = np.vstack([np.zeros(2), rng.poisson(rate, (n_parts - 1, 2))])
        matches.append(
            MatchParts(
                match_id=f"{m:04d}",
                team_size=2,
                teams=teams,
                player_keys=tuple(f"name:{m}-{i}" for i in range(4)),
                minutes=np.full(n_parts, 2.5),
                present=np.ones((n_parts, 4), dtype=bool),
                player_totals=totals,
                p_score=np.full((n_parts, 2), 0.05),
                goals=goals,
            )
        )
    return matches


def _cuts(seed: int, n: int = 120) -> dict[int, list[MatchParts]]:
    return {
        2: _matches(np.random.default_rng(seed), n, 2),
        4: _matches(np.random.default_rng(seed + 1), n, 4),
    }


def test_the_fit_weighs_the_part_that_forecasts_later_goals_and_scales_to_goals():
    weights, margins = fit_rating(_cuts(0))
    assert weights.change == max(GRID["change"])
    assert weights.scale > 0
    assert np.isfinite(margins.prediction) and np.isfinite(margins.reliability)


def test_a_searched_pace_weight_follows_the_pace_that_forecasts_later_goals():
    cuts = _cuts(5)
    for matches in cuts.values():  # pace now carries the change's forecast, the change none
        for m in matches:
            totals = m.player_totals
            totals[PACE_TOTAL], totals["change_for"] = totals["change_for"], totals[PACE_TOTAL]
    searched, with_pace = fit_rating(cuts, PACE_SEARCH)
    _, without = fit_rating(cuts, (0.0,))
    assert searched.pace > 0 and with_pace.prediction > without.prediction + 0.05
    fixed, _ = fit_rating(cuts)
    assert fixed.pace == GRID["pace"][0] and len(GRID["pace"]) == 1
    _, weights = cross_fitted(cuts, 5, (1.5,))
    assert {w.pace for w in weights} == {1.5}


def test_folds_deal_the_matches_evenly_by_id():
    ids = [f"{i:03d}" for i in range(25)][::-1]
    fold = fold_of(ids, 5)
    assert np.bincount(fold).tolist() == [5] * 5
    assert fold_of(ids, 5).tolist() == fold.tolist()
    assert fold[ids.index("000")] == 0 and fold[ids.index("005")] == 0
    assert sorted(fold_of(ids, None).tolist()) == list(range(25))  # leave one out


def test_the_fits_margins_are_the_validity_statistics_of_the_rated_matches():
    cuts = _cuts(4, 40)
    weights = RatingWeights(change=1.7, held=2.0, touch=0.13)
    rated = {n: [weighted_totals(m, weights) for m in ms] for n, ms in cuts.items()}
    halves = split_half_reliability(rated[2], ("impact", "touches"), rounds=0).pooled
    expected_reliability = halves["impact"].value - halves["touches"].value
    worst = np.inf
    for split, n_parts in SPLITS:
        metrics = ("impact", *BASELINES)
        found = predictive_validity(rated[n_parts], metrics, split, rounds=0).spearman
        worst = min(worst, found["impact"].value - max(found[b].value for b in BASELINES))
    got = margins(design(cuts), vector(weights))
    assert got.reliability == pytest.approx(expected_reliability)
    assert got.prediction == pytest.approx(worst)


def test_cross_fitting_rates_each_match_with_weights_fitted_without_it():
    cuts = _cuts(2, 60)
    rated, weights = cross_fitted(cuts)
    assert len(weights) == FOLDS and len({w.scale for w in weights}) == 1
    fold = fold_of([m.match_id for m in cuts[2]], FOLDS)
    for k in (0, 3):
        train = {n: [m for m, f in zip(ms, fold, strict=True) if f != k] for n, ms in cuts.items()}
        expected, _ = fit_rating(train)
        assert replace(weights[k], scale=expected.scale) == expected
        held_out = int(np.flatnonzero(fold == k)[0])
        again = weighted_totals(cuts[2][held_out], weights[k])
        assert rated[2][held_out].player_totals["impact"] == pytest.approx(
            again.player_totals["impact"]
        )
    # a held-out match's own goals do not move the weights it is rated with
    changed = {n: list(ms) for n, ms in cuts.items()}
    first = int(np.flatnonzero(fold == 0)[0])
    for n in changed:
        changed[n][first] = replace(changed[n][first], goals=changed[n][first].goals + 5)
    _, again = cross_fitted(changed)
    assert replace(again[0], scale=weights[0].scale) == weights[0]


def test_fit_rating_command_prints_weights_to_ship(good_replays):
    chosen = [r for r in good_replays if r.team_size == 3 and (r.goals or 0) >= 4][:4]
    result = _cli("fit-rating", *(str(r.path) for r in chosen))
    assert result.returncode == 0, result.stderr
    assert "matches, model" in result.stdout
    assert 0 < float(result.stdout.split("REFERENCE_P_SCORE = ")[1].split()[0]) < 1
    line = next(x for x in result.stdout.splitlines() if x.startswith("SHIPPED_WEIGHTS = "))
    weights = {k: float(v) for k, v in re.findall(r"(\w+)=([-\d.]+)", line)}
    assert weights["change"] in GRID["change"] and weights["touch"] in GRID["touch"]
    assert weights["held"] in GRID["held"] and weights["scale"] != 0  # 4 matches: any sign
    assert weights["pace"] == GRID["pace"][0]
    two = _cli("fit-rating", "--pace-weight", "2", *(str(r.path) for r in chosen))
    assert two.returncode == 0 and "pace=2," in two.stdout, two.stderr
    wrong = _cli("fit-rating", "--pace-weight", "fast", str(chosen[0].path))
    assert wrong.returncode == 2 and "not a number nor 'search'" in wrong.stderr
