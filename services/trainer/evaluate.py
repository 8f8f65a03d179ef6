"""Evaluate an impact model on held-out replays against a ball-only baseline; plots as PNG.

Forecasts are scored per (live frame, team): P(team k scores within the horizon) is what
:func:`shared.impact.team_score_probability` makes of the rows of both teams (the
number impact is computed from), and P(team k concedes) is the other team's P(score).
Frames between a goal and the next kickoff are left out, as in training.

The baseline is the same network trained by the same trainer on the same replays, reading
only the ball's position and velocity (in the team's frame of reference).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from types import ModuleType

import numpy as np

from shared.features.table import FeatureTable
from shared.impact import PlayerScore, TouchCredit, team_score_probability
from shared.model import Predictor

EPSILON = 1e-7
EVENTS = ("score", "concede")
BOOTSTRAP_ROUNDS = 1000
BOOTSTRAP_LEVEL = 0.95
BALL_INPUTS = ("ball_x", "ball_y", "ball_z", "ball_vx", "ball_vy", "ball_vz")
CALIBRATION_BINS = 10
CALIBRATION_FILE = "calibration.png"
IMPACT_FILE = "impact.png"
TEAM_COLOURS = ("tab:blue", "tab:orange")


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    p = np.clip(probabilities.astype(np.float64), EPSILON, 1 - EPSILON)
    y = labels.astype(np.float64)
    return {
        "log_loss": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))),
        "brier": float(np.mean((p - y) ** 2)),
        "roc_auc": roc_auc(y, p),
        "positive_rate": float(y.mean()),
    }


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUC with average ranks for ties; NaN when only one class is present."""
    positives = labels > 0.5
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = ((ends - counts + 1 + ends) / 2.0)[inverse]
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def weighted_roc_auc(labels: np.ndarray, value_index: np.ndarray, weights: np.ndarray) -> float:
    """ROC AUC of rows counted ``weights`` times each (ties count half). ``value_index`` ranks
    the scores (``np.unique``'s inverse), so that resamples need not sort them again."""
    positives = labels > 0.5
    n_values = int(value_index.max()) + 1 if value_index.size else 0
    w_pos = np.bincount(value_index, weights=weights * positives, minlength=n_values)
    w_neg = np.bincount(value_index, weights=weights * ~positives, minlength=n_values)
    pairs = w_pos.sum() * w_neg.sum()
    if pairs == 0:
        return float("nan")
    below = np.cumsum(w_neg) - w_neg
    return float((w_pos * (below + 0.5 * w_neg)).sum() / pairs)


@dataclass(frozen=True)
class AucInterval:
    low: float
    high: float

    def __str__(self) -> str:
        return f"[{self.low:.3f}, {self.high:.3f}]"


def bootstrap_auc_intervals(
    labels: np.ndarray,
    scores: dict[str, np.ndarray],
    replay: np.ndarray,
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = 0,
) -> dict[str, AucInterval]:
    """Percentile intervals (BOOTSTRAP_LEVEL) of each forecast's ROC AUC, and of the first's
    minus each other's ("first - other"), over ``rounds`` resamples of the replays with
    replacement: how much the AUC depends on which matches were held out. Frames of one
    replay are not independent, so replays, not rows, are drawn; all forecasts see the same
    draws."""
    names = list(scores)
    ranked = {name: np.unique(s, return_inverse=True)[1] for name, s in scores.items()}
    _, group = np.unique(replay, return_inverse=True)
    n_groups = int(group.max()) + 1 if group.size else 0
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds if n_groups else 0):
        weights = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)[group]
        for name in names:
            draws[name].append(weighted_roc_auc(labels, ranked[name], weights.astype(float)))
    samples = {name: np.array(values) for name, values in draws.items()}
    samples |= {f"{names[0]} - {n}": samples[names[0]] - samples[n] for n in names[1:]}
    return {name: _percentile_interval(values) for name, values in samples.items()}


def _percentile_interval(values: np.ndarray) -> AucInterval:
    """The middle BOOTSTRAP_LEVEL of ``values`` (NaN draws, with one class only, left out)."""
    values = values[~np.isnan(values)]
    if not values.size:
        return AucInterval(float("nan"), float("nan"))
    tail = (1 - BOOTSTRAP_LEVEL) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return AucInterval(float(low), float(high))


@dataclass(frozen=True)
class TeamForecasts:
    """Per (live frame, team) of some replays: forecasts and what happened."""

    p_score: np.ndarray  # [N]
    p_concede: np.ndarray  # [N]
    scored: np.ndarray  # [N] bool: the team scored within the horizon
    conceded: np.ndarray  # [N] bool
    replay: np.ndarray  # [N] int: which of the replays the row is from

    def outcome(self, event: str) -> tuple[np.ndarray, np.ndarray]:
        """(what happened, the forecast) of ``event``: one of EVENTS."""
        if event == "score":
            return self.scored, self.p_score
        return self.conceded, self.p_concede

    def metrics(self) -> dict[str, dict[str, float]]:
        return {event: binary_metrics(*self.outcome(event)) for event in EVENTS}

    @classmethod
    def concat(cls, parts: Sequence[TeamForecasts]) -> TeamForecasts:
        """The forecasts of ``parts``, each of other replays, as one: each part's replay
        numbers are shifted past the previous parts' so that no two replays share one."""
        counts = [int(p.replay.max()) + 1 if p.replay.size else 0 for p in parts]
        starts = np.cumsum([0, *counts[:-1]])
        shifted = [replace(p, replay=p.replay + s) for p, s in zip(parts, starts, strict=True)]
        return cls(*(np.concatenate([getattr(p, f.name) for p in shifted]) for f in fields(cls)))


def table_forecasts(table: FeatureTable, probabilities: np.ndarray) -> TeamForecasts:
    """``probabilities`` [T, P, 2] per row -> forecasts for each team that has players (all
    rows from replay number 0)."""
    return team_forecasts(table, team_score_probability(table, probabilities))


def team_forecasts(table: FeatureTable, p_score: np.ndarray) -> TeamForecasts:
    """Each team's P(score) [T, 2] (:func:`team_score_probability`) -> the forecasts of its
    live frames for each team that has players (all rows from replay number 0)."""
    live = table.live
    p_team = p_score[live]  # [L, 2]
    teams = np.array([p.team for p in table.players])
    parts = []
    for team in (0, 1):
        if not (teams == team).any():
            continue
        player = int(np.flatnonzero(teams == team)[0])
        parts.append(
            (
                p_team[:, team],
                p_team[:, 1 - team],
                table.label_score[live, player],
                table.label_concede[live, player],
                np.zeros(int(live.sum()), dtype=int),
            )
        )
    if not parts:
        empty = np.zeros(0)
        return TeamForecasts(
            empty, empty, empty.astype(bool), empty.astype(bool), empty.astype(int)
        )
    return TeamForecasts(*(np.concatenate(column) for column in zip(*parts, strict=True)))


def forecasts(tables: Sequence[FeatureTable], model: Predictor) -> TeamForecasts:
    parts = []
    for table in tables:
        n_frames, n_players, n_features = table.features.shape
        rows = np.ascontiguousarray(table.features.reshape(-1, n_features), dtype=np.float32)
        probabilities = model.predict(rows).reshape(n_frames, n_players, 2)
        parts.append(table_forecasts(table, probabilities))
    return TeamForecasts.concat(parts)


class TorchPredictor:
    """A trained torch impact network as a :class:`Predictor` (no ONNX export needed)."""

    def __init__(self, model: object) -> None:
        self.model = model

    def predict(self, features: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.model(torch.from_numpy(features)).numpy()  # type: ignore[operator]


def auc_intervals(results: dict[str, TeamForecasts]) -> dict[str, dict[str, AucInterval]]:
    """Per event, :func:`bootstrap_auc_intervals` of forecasts made on the same rows (the
    others are compared with the first)."""
    first = next(iter(results.values()))
    intervals = {}
    for event in EVENTS:
        scores = {name: result.outcome(event)[1] for name, result in results.items()}
        intervals[event] = bootstrap_auc_intervals(first.outcome(event)[0], scores, first.replay)
    return intervals


def format_report(
    results: dict[str, TeamForecasts], intervals: dict[str, dict[str, AucInterval]]
) -> str:
    """A table: one line per (event, model) with log-loss, Brier and ROC AUC with its interval
    (:func:`auc_intervals`), then the first's AUC minus each other's."""
    level = f"{BOOTSTRAP_LEVEL:.0%} interval"
    lines = [
        f"  {'forecast':<12} {'model':<12} {'log-loss':>9} {'Brier':>8} {'ROC AUC':>8}  {level}"
    ]
    metrics = {name: result.metrics() for name, result in results.items()}
    for event in EVENTS:
        for name in results:
            m = metrics[name][event]
            lines.append(
                f"  {'P(' + event + ')':<12} {name:<12} {m['log_loss']:>9.4f} "
                f"{m['brier']:>8.4f} {m['roc_auc']:>8.4f}  {intervals[event][name]}"
            )
    first, *others = results
    for name in others:
        for event in EVENTS:
            difference = metrics[first][event]["roc_auc"] - metrics[name][event]["roc_auc"]
            lines.append(
                f"  P({event}) ROC AUC, {first} - {name}: {difference:+.4f}  "
                f"{intervals[event][f'{first} - {name}']}"
            )
    lines.append(
        f"  (intervals: {BOOTSTRAP_LEVEL:.0%} of {BOOTSTRAP_ROUNDS} resamples of the replays, "
        "drawn with replacement)"
    )
    return "\n".join(lines)


def calibration_curve(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = CALIBRATION_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean forecast, observed rate, count) per quantile bin of the forecasts."""
    order = np.argsort(probabilities, kind="stable")
    groups = [g for g in np.array_split(order, bins) if g.size]
    return (
        np.array([probabilities[g].mean() for g in groups]),
        np.array([labels[g].mean() for g in groups]),
        np.array([g.size for g in groups]),
    )


def _pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def calibration_plot(results: dict[str, TeamForecasts], path: Path, horizon: float) -> None:
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, event in zip(axes, EVENTS, strict=True):
        top = 0.0
        for name, result in results.items():
            y, p = result.outcome(event)
            mean, rate, _ = calibration_curve(y.astype(np.float64), p)
            auc = roc_auc(y, p)
            ax.plot(mean, rate, marker="o", label=f"{name} (AUC {auc:.3f})")
            top = max(top, float(mean.max()), float(rate.max()))
        ax.plot([0, top], [0, top], color="grey", linestyle="--", label="perfectly calibrated")
        ax.set(
            xlabel=f"forecast P({event} within {horizon:g} s)",
            ylabel="observed frequency",
            title=f"P({event}): held-out replays, deciles of the forecast",
        )
        ax.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def impact_plot(
    table: FeatureTable,
    p_score: np.ndarray,
    credits: list[TouchCredit],
    scores: list[PlayerScore],
    path: Path,
    title: str,
) -> None:
    """Top: both teams' P(score) over the replay, goals and touches marked. Bottom: each
    player's impact split into offence and defence."""
    plt = _pyplot()
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(11, 8), height_ratios=(3, 2))
    time = table.time - table.time[0]
    for team in (0, 1):
        values = np.where(table.live, p_score[:, team], np.nan)
        top.plot(
            time, values, color=TEAM_COLOURS[team], linewidth=0.8, label=f"P(team {team} scores)"
        )
    for goal in table.goals:
        top.axvline(goal.time - table.time[0], color=TEAM_COLOURS[goal.team], linestyle="--")
    frames = [c.frame for c in credits]
    top.scatter(
        time[frames],
        np.full(len(frames), -0.03),
        c=[TEAM_COLOURS[c.team] for c in credits],
        marker="|",
        s=40,
        label="touches",
    )
    top.set(xlabel="seconds", ylabel="probability", title=title, ylim=(-0.06, 1.0))
    top.legend(loc="upper right")
    ordered = sorted(scores, key=lambda s: (s.team, -s.impact))
    names = [f"{s.name[:16]} ({s.touches})" for s in ordered]
    x = np.arange(len(ordered))
    offence = [s.offence for s in ordered]
    defence = [s.defence for s in ordered]
    bottom.bar(x, offence, color=[TEAM_COLOURS[s.team] for s in ordered], label="offence")
    bottom.bar(x, defence, bottom=offence, color="lightgrey", edgecolor="grey", label="defence")
    above = np.add(offence, defence)
    pace = [s.pace for s in ordered]
    bottom.bar(x, pace, bottom=above, color="white", edgecolor="black", hatch="//", label="pace")
    bottom.scatter(x, [s.impact for s in ordered], color="black", zorder=3, label="impact")
    bottom.axhline(0, color="black", linewidth=0.6)
    bottom.set_xticks(x, names, rotation=20, ha="right")
    bottom.set(ylabel="impact (100 = one goal)", title="impact per player (touches)")
    bottom.legend()
    figure.tight_layout()
    with warnings.catch_warnings():  # player names in scripts the default font lacks
        warnings.simplefilter("ignore", UserWarning)
        figure.savefig(path, dpi=90)
    plt.close(figure)
