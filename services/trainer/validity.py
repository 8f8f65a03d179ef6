"""How far player ratings can be trusted, without skill labels. Pure numpy, no I/O but the plot.

Two questions, as the field asks them of football ratings (Hvattum & Gelade 2021, VAEP
against plus-minus):

- **reliability**: does a player get a similar rating on other data of the same skill? Within
  a match, the first half against the second (split-half); across matches, for players who
  come back (by platform id), their odd appearances against their even ones. Ratings differ
  in level between team sizes (a 1v1 player touches the ball more than a 3v3 one), which
  inflates any correlation pooled over team sizes; so each half's ratings are standardised
  per team size before they are pooled, and each team size is also reported alone.
- **predictive validity**: does a team's rating edge in the earlier part of a match (its
  players' ratings per minute minus the other team's) forecast the goal difference of the
  later part? Spearman's rank correlation, each match seen from both teams' sides.

Every measure comes with a 95 % interval from resampling whole matches (players, for the
across-match reliability) with replacement, and every rating is measured next to simple
baselines on the same data and draws: touches per minute, the team's mean P(score), the goal
difference so far, the header's in-game score points (whole matches only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from services.trainer.statistics import (
    ROUNDS,
    Estimate,
    Statistic,
    Unit,
    bootstrap,
    differences,
    pearson,
    spearman,
    standardised,
)
from shared.features.table import FEATURE_NAMES, FeatureTable
from shared.impact import (
    DEMOLISHED,
    IMPACT_SCALE,
    SECONDS_PER_MINUTE,
    TouchCredit,
    frame_step,
    pace_credit,
    table_pace,
)
from shared.rating import NO_PARTS, SHIPPED_WEIGHTS, RatingWeights

TEAM_SIZE = FEATURE_NAMES.index("team_size")
TEAM_SIZE_SCALE = 4.0  # features.py stores team_size / 4
MIN_PRESENCE = 0.5  # a player counts in a part when on the pitch for this share of its frames
MIN_LIVE_MINUTES = 2.0  # shorter replays (clips, aborted matches) are too short to cut in parts
IMPACT = "impact"
PLAYER_METRICS = ("impact", "offence", "defence", "pace", "touches")
TEAM_METRICS = ("mean P(score)", "goal difference")
POOLED = "pooled"
# A touch's parts (shared.rating.TouchParts) summed per player and part, and the player's pace
# (shared.impact.pace_per_frame), x IMPACT_SCALE: what the rating's weights are fitted on
# (services/trainer/rating_fit.py)
TOUCH_PARTS = ("change_for", "change_against", "threat_for", "threat_against", "held_for")
PACE_TOTAL = "pace_total"
PART_TOTALS = (*TOUCH_PARTS, PACE_TOTAL)


@dataclass(frozen=True)
class MatchParts:
    """One match cut into parts of equal live time: what each player and team did in each."""

    match_id: str
    team_size: int
    teams: np.ndarray  # [P] 0 or 1
    player_keys: tuple[str, ...]  # platform id, else the name: who the player is across matches
    minutes: np.ndarray  # [K] live minutes of each part
    present: np.ndarray  # [K, P] bool: on the pitch for most of the part
    player_totals: dict[str, np.ndarray]  # rating -> [K, P] sum over the part (rate: / minutes)
    p_score: np.ndarray  # [K, 2] each team's mean P(score) over the part's live frames
    goals: np.ndarray  # [K, 2] goals each team scored in the part
    whole_match: dict[str, np.ndarray] = field(default_factory=dict)  # rating -> [P], NaN: none

    @property
    def n_parts(self) -> int:
        return int(self.minutes.shape[0])

    def rates(self, rating: str, parts: slice = slice(None)) -> np.ndarray:
        """[P] the rating per live minute over ``parts``."""
        minutes = self.minutes[parts].sum()
        return self.player_totals[rating][parts].sum(axis=0) / max(minutes, 1e-9)

    def team_edge(self, metric: str, parts: slice) -> float:
        """Team 0's edge over team 1 over ``parts``: a player rating's per-minute sums, the mean
        P(score) or the goals."""
        if metric == "goal difference":
            goals = self.goals[parts].sum(axis=0)
            return float(goals[0] - goals[1])
        if metric == "mean P(score)":
            weights = self.minutes[parts]
            mean = (self.p_score[parts] * weights[:, None]).sum(axis=0) / max(weights.sum(), 1e-9)
            return float(mean[0] - mean[1])
        rates = self.rates(metric, parts)
        return float(rates[self.teams == 0].sum() - rates[self.teams == 1].sum())


def part_bounds(live: np.ndarray, n_parts: int) -> np.ndarray:
    """[n_parts + 1] frame indices cutting the table into parts of equal live frames."""
    live_index = np.flatnonzero(live)
    if not live_index.size:
        return np.zeros(n_parts + 1, dtype=np.int64)
    cuts = [live_index[round(i * live_index.size / n_parts)] for i in range(n_parts)]
    return np.array([0, *cuts[1:], live.shape[0]], dtype=np.int64)


def table_team_size(table: FeatureTable) -> int:
    return round(float(table.features[0, 0, TEAM_SIZE]) * TEAM_SIZE_SCALE)


def match_parts(
    table: FeatureTable,
    p_score: np.ndarray,
    credits: Sequence[TouchCredit],
    n_parts: int = 2,
    whole_match: dict[str, np.ndarray] | None = None,
    weights: RatingWeights = SHIPPED_WEIGHTS,
) -> MatchParts:
    """``table`` cut into ``n_parts`` of equal live time; ``p_score`` [T, 2] and ``credits``
    as :mod:`shared.impact` makes them (impact in points: x IMPACT_SCALE), with ``weights``
    (those the credits were weighed with) for the players' pace."""
    bounds = part_bounds(table.live, n_parts)
    part_of_frame = np.searchsorted(bounds, np.arange(table.time.shape[0]), side="right") - 1
    n_players = len(table.players)
    totals = {name: np.zeros((n_parts, n_players)) for name in (*PLAYER_METRICS, *PART_TOTALS)}
    for credit in credits:
        part, player = part_of_frame[credit.frame], credit.player_index
        totals["offence"][part, player] += IMPACT_SCALE * credit.offence
        totals["defence"][part, player] += IMPACT_SCALE * credit.defence
        totals["touches"][part, player] += 1
        parts = credit.parts or NO_PARTS
        for name in TOUCH_PARTS:
            totals[name][part, player] += IMPACT_SCALE * getattr(parts, name)
    pace = table_pace(table)
    for k in range(n_parts):
        totals[PACE_TOTAL][k] = IMPACT_SCALE * pace[bounds[k] : bounds[k + 1]].sum(axis=0)
    totals["pace"] = pace_credit(totals[PACE_TOTAL] / IMPACT_SCALE, weights)
    totals["impact"] = totals["offence"] + totals["defence"] + totals["pace"]
    step = frame_step(table)
    on_pitch = (table.features[:, :, DEMOLISHED] < 0.5) & table.live[:, None]
    minutes, present, p_mean = np.zeros(n_parts), np.zeros((n_parts, n_players), bool), []
    for part in range(n_parts):
        frames = slice(bounds[part], bounds[part + 1])
        live = table.live[frames]
        minutes[part] = live.sum() * step / SECONDS_PER_MINUTE
        present[part] = on_pitch[frames].sum(axis=0) >= MIN_PRESENCE * max(live.sum(), 1)
        p_mean.append(p_score[frames][live].mean(axis=0) if live.any() else np.zeros(2))
    goals = np.zeros((n_parts, 2))
    goal_frames = np.searchsorted(table.time, [g.time for g in table.goals], side="left")
    for goal, frame in zip(table.goals, goal_frames, strict=True):
        # a goal belongs to the part of the live frame that ends with it
        goals[part_of_frame[min(max(frame - 1, 0), len(part_of_frame) - 1)], goal.team] += 1
    return MatchParts(
        match_id=table.replay_id,
        team_size=table_team_size(table),
        teams=np.array([p.team for p in table.players]),
        player_keys=tuple(p.platform_id or f"name:{p.name}" for p in table.players),
        minutes=minutes,
        present=present,
        player_totals=totals,
        p_score=np.array(p_mean),
        goals=goals,
        whole_match=whole_match or {},
    )


# ---------------------------------------------------------------- reliability


def split_half_units(matches: Sequence[MatchParts], ratings: Sequence[str]) -> list[Unit]:
    """Per match: each player present in both halves, the rating per minute in each half.
    The matches must be cut in two parts."""
    units = []
    for match in matches:
        if match.n_parts != 2:
            raise ValueError(
                f"split-half reliability needs matches in 2 parts, got {match.n_parts}"
            )
        both = match.present.all(axis=0)
        unit: Unit = {"team_size": np.full(int(both.sum()), match.team_size)}
        for rating in ratings:
            unit[f"{rating}/1"] = match.rates(rating, slice(0, 1))[both]
            unit[f"{rating}/2"] = match.rates(rating, slice(1, 2))[both]
        units.append(unit)
    return units


def split_half_statistic(rating: str, team_size: int | None = None) -> Statistic:
    """Pearson r of the two halves' ratings: within ``team_size``, or (None) pooled over team
    sizes after standardising each half per team size."""

    def statistic(unit: Unit) -> float:
        first, second, sizes = unit[f"{rating}/1"], unit[f"{rating}/2"], unit["team_size"]
        if team_size is not None:
            chosen = sizes == team_size
            return pearson(first[chosen], second[chosen])
        return pearson(standardised(first, sizes), standardised(second, sizes))

    return statistic


def split_half_raw_statistic(rating: str) -> Statistic:
    """Pooled over team sizes without standardising: what mixing team sizes inflates."""
    return lambda unit: pearson(unit[f"{rating}/1"], unit[f"{rating}/2"])


@dataclass(frozen=True)
class Reliability:
    pooled: dict[str, Estimate]  # rating -> r, standardised per team size, pooled
    raw: dict[str, Estimate]  # rating -> r, pooled without standardising
    by_team_size: dict[int, dict[str, Estimate]]
    versus: dict[str, Estimate]  # "impact - touches" ...: pooled r differences


def split_half_reliability(
    matches: Sequence[MatchParts],
    ratings: Sequence[str] = PLAYER_METRICS,
    rounds: int = ROUNDS,
    min_pairs: int = 20,
) -> Reliability:
    """:func:`split_half_statistic` of each rating pooled and per team size (those with at least
    ``min_pairs`` players in both halves), intervals over resampled matches."""
    units = split_half_units(matches, ratings)
    pooled = {r: split_half_statistic(r) for r in ratings}
    sizes = np.concatenate([u["team_size"] for u in units]) if units else np.zeros(0)
    by_size = {}
    for size in sorted(set(sizes.astype(int).tolist())):
        if (sizes == size).sum() >= min_pairs:
            statistics = {r: split_half_statistic(r, size) for r in ratings}
            by_size[size] = bootstrap(units, statistics, rounds)
            by_size[size] = {
                r: Estimate(e.value, e.low, e.high, int((sizes == size).sum()))
                for r, e in by_size[size].items()
            }
    return Reliability(
        pooled=bootstrap(units, pooled, rounds, count="team_size"),
        raw=bootstrap(
            units, {r: split_half_raw_statistic(r) for r in ratings}, rounds, count="team_size"
        ),
        by_team_size=by_size,
        versus=differences(units, pooled, ratings[0], rounds),
    )


def across_match_units(matches: Sequence[MatchParts], ratings: Sequence[str]) -> list[Unit]:
    """Per player who plays in 2 or more matches (by platform id, never by name): the mean of
    the player's standardised whole-match ratings over odd appearances, and over even ones."""
    rows: dict[str, list[tuple[int, dict[str, float]]]] = {}
    per_rating: dict[str, list[float]] = {r: [] for r in ratings}
    sizes: list[int] = []
    owners: list[str] = []
    for match in matches:
        present = np.asarray(match.present.any(axis=0))
        whole_match = {r: _whole_match(match, r) for r in ratings}
        for player, key in enumerate(match.player_keys):
            if not present[player] or key.startswith("name:"):
                continue
            owners.append(key)
            sizes.append(match.team_size)
            for rating in ratings:
                per_rating[rating].append(whole_match[rating][player])
    if not owners:
        return []
    size_array = np.array(sizes)
    z = {}
    for rating, standing in per_rating.items():
        array = np.array(standing)
        known = ~np.isnan(array)
        z[rating] = np.full(array.shape, np.nan)
        z[rating][known] = standardised(array[known], size_array[known])
    for i, key in enumerate(owners):
        rows.setdefault(key, []).append((i, {r: float(z[r][i]) for r in ratings}))
    units = []
    for appearances in rows.values():
        if len(appearances) < 2:
            continue
        unit: Unit = {"players": np.ones(1)}
        for rating in ratings:
            seen = np.array([a[1][rating] for a in appearances])
            unit[f"{rating}/1"] = np.array([_known_mean(seen[0::2])])
            unit[f"{rating}/2"] = np.array([_known_mean(seen[1::2])])
        units.append(unit)
    return units


def _known_mean(values: np.ndarray) -> float:
    known = values[~np.isnan(values)]
    return float(known.mean()) if known.size else float("nan")


def _whole_match(match: MatchParts, rating: str) -> np.ndarray:
    if rating in match.whole_match:
        return match.whole_match[rating] / max(match.minutes.sum(), 1e-9)
    if rating in match.player_totals:
        return match.rates(rating)
    return np.full(match.teams.shape[0], np.nan)


def across_match_reliability(
    matches: Sequence[MatchParts], ratings: Sequence[str], rounds: int = ROUNDS
) -> dict[str, Estimate]:
    """Pearson r of odd against even appearances per recurring player (see
    :func:`across_match_units`), intervals over resampled players; a rating some matches lack
    (the header's score points) counts the players who have it in both."""
    units = across_match_units(matches, ratings)

    def statistic(rating: str) -> Statistic:
        def r(unit: Unit) -> float:
            first, second = unit[f"{rating}/1"], unit[f"{rating}/2"]
            known = ~(np.isnan(first) | np.isnan(second))
            return pearson(first[known], second[known])

        return r

    return bootstrap(units, {r: statistic(r) for r in ratings}, rounds, count="players")


# ---------------------------------------------------------------- predictive validity


def prediction_units(
    matches: Sequence[MatchParts], metrics: Sequence[str], split: int
) -> list[Unit]:
    """Per match, from each team's side: its edge in each metric over the parts before
    ``split``, and its goal difference over the parts from ``split`` on."""
    units = []
    for match in matches:
        before, after = slice(0, split), slice(split, None)
        unit: Unit = {"later": np.array([1.0, -1.0]) * match.team_edge("goal difference", after)}
        for metric in metrics:
            unit[metric] = np.array([1.0, -1.0]) * match.team_edge(metric, before)
        units.append(unit)
    return units


def prediction_statistic(metric: str) -> Statistic:
    return lambda unit: spearman(unit[metric], unit["later"])


@dataclass(frozen=True)
class Prediction:
    split: int  # the earlier part is parts [0, split), of n_parts
    n_parts: int
    spearman: dict[str, Estimate]  # metric -> rank correlation with the later goal difference
    versus: dict[str, Estimate]  # "impact - <metric>"

    @property
    def label(self) -> str:
        """'first 1/4 -> the rest': which parts forecast which."""
        if (self.split, self.n_parts) == (1, 2):
            return "first half -> second"
        return f"first {self.split}/{self.n_parts} -> the rest"


def predictive_validity(
    matches: Sequence[MatchParts],
    metrics: Sequence[str] = (*PLAYER_METRICS, *TEAM_METRICS),
    split: int | None = None,
    rounds: int = ROUNDS,
) -> Prediction:
    """Spearman of each metric's earlier edge with the later goal difference (:func:
    `prediction_units`; ``split`` defaults to half the parts), intervals over resampled
    matches, and the first metric's margin over each other one."""
    n_parts = matches[0].n_parts if matches else 2
    split = n_parts // 2 if split is None else split
    units = prediction_units(matches, metrics, split)
    statistics = {m: prediction_statistic(m) for m in metrics}
    return Prediction(
        split=split,
        n_parts=n_parts,
        spearman=bootstrap(units, statistics, rounds),
        versus=differences(units, statistics, metrics[0], rounds),
    )


# ---------------------------------------------------------------- report


def estimates_json(estimates: dict[str, Estimate]) -> dict[str, dict[str, float]]:
    return {name: e.as_json() for name, e in estimates.items()}


def validity_plot(
    reliability: Reliability,
    predictions: Sequence[Prediction],
    across: dict[str, Estimate],
    path: Path,
    title: str,
) -> None:
    """Bars with 95 % intervals: split-half reliability (within team size, pooled), across
    matches, and predictive validity of each split."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    panels = [
        ("split-half r (standardised per team size)", reliability.pooled),
        ("across-match r (recurring players)", across),
        *((f"Spearman: {p.label} goal difference", p.spearman) for p in predictions),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    for ax, (label, estimates) in zip(axes[0], panels, strict=True):
        names = list(estimates)
        values = np.array([estimates[n].value for n in names])
        errors = np.array(
            [
                [estimates[n].value - estimates[n].low for n in names],
                [estimates[n].high - estimates[n].value for n in names],
            ]
        )
        colours = ["tab:red" if n == IMPACT else "tab:grey" for n in names]
        ax.bar(np.arange(len(names)), np.nan_to_num(values), color=colours)
        ax.errorbar(np.arange(len(names)), values, yerr=np.nan_to_num(errors), fmt="none",
                    ecolor="black", capsize=3)  # fmt: skip
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(np.arange(len(names)), names, rotation=35, ha="right")
        ax.set_title(label, fontsize=9)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
