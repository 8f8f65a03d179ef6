"""Evaluate an impact model on held-out replays against a ball-only baseline; plots as PNG.

Forecasts are scored per (live frame, team): P(team k scores within the horizon) is what
:func:`services.scorer.score.team_score_probability` makes of the rows of both teams (the
number impact is computed from), and P(team k concedes) is the other team's P(score).
Frames between a goal and the next kickoff are left out, as in training.

The baseline is the same network trained by the same trainer on the same replays, reading
only the ball's position and velocity (in the team's frame of reference).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from services.featurizer.features import FeatureTable
from services.scorer.score import PlayerScore, TouchCredit, team_score_probability

EPSILON = 1e-7
BALL_INPUTS = ("ball_x", "ball_y", "ball_z", "ball_vx", "ball_vy", "ball_vz")
CALIBRATION_BINS = 10
CALIBRATION_FILE = "calibration.png"
IMPACT_FILE = "impact.png"
TEAM_COLOURS = ("tab:blue", "tab:orange")


class Predictor(Protocol):
    def predict(self, features: np.ndarray) -> np.ndarray:
        """[N, F] float32 -> [N, 2] (P(score), P(concede)) per feature row."""
        ...


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


@dataclass(frozen=True)
class TeamForecasts:
    """Per (live frame, team) of some replays: forecasts and what happened."""

    p_score: np.ndarray  # [N]
    p_concede: np.ndarray  # [N]
    scored: np.ndarray  # [N] bool: the team scored within the horizon
    conceded: np.ndarray  # [N] bool

    def metrics(self) -> dict[str, dict[str, float]]:
        return {
            "score": binary_metrics(self.scored, self.p_score),
            "concede": binary_metrics(self.conceded, self.p_concede),
        }


def table_forecasts(table: FeatureTable, probabilities: np.ndarray) -> TeamForecasts:
    """``probabilities`` [T, P, 2] per row -> forecasts for each team that has players."""
    live = table.live
    p_team = team_score_probability(table, probabilities)[live]  # [L, 2]
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
            )
        )
    if not parts:
        empty = np.zeros(0)
        return TeamForecasts(empty, empty, empty.astype(bool), empty.astype(bool))
    return TeamForecasts(*(np.concatenate(column) for column in zip(*parts, strict=True)))


def forecasts(tables: Sequence[FeatureTable], model: Predictor) -> TeamForecasts:
    parts = []
    for table in tables:
        n_frames, n_players, n_features = table.features.shape
        rows = np.ascontiguousarray(table.features.reshape(-1, n_features), dtype=np.float32)
        probabilities = model.predict(rows).reshape(n_frames, n_players, 2)
        parts.append(table_forecasts(table, probabilities))
    return TeamForecasts(
        *(
            np.concatenate([getattr(p, name) for p in parts])
            for name in ("p_score", "p_concede", "scored", "conceded")
        )
    )


class TorchPredictor:
    """A trained torch impact network as a :class:`Predictor` (no ONNX export needed)."""

    def __init__(self, model: object) -> None:
        self.model = model

    def predict(self, features: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.model(torch.from_numpy(features)).numpy()  # type: ignore[operator]


def format_report(results: dict[str, TeamForecasts]) -> str:
    """A table: one line per (event, model) with log-loss, Brier and ROC AUC."""
    lines = [f"  {'forecast':<12} {'model':<12} {'log-loss':>9} {'Brier':>8} {'ROC AUC':>8}"]
    for event in ("score", "concede"):
        for name, result in results.items():
            m = result.metrics()[event]
            lines.append(
                f"  {'P(' + event + ')':<12} {name:<12} {m['log_loss']:>9.4f} "
                f"{m['brier']:>8.4f} {m['roc_auc']:>8.4f}"
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


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def calibration_plot(results: dict[str, TeamForecasts], path: Path, horizon: float) -> None:
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, event in zip(axes, ("score", "concede"), strict=True):
        top = 0.0
        for name, result in results.items():
            p = result.p_score if event == "score" else result.p_concede
            y = result.scored if event == "score" else result.conceded
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
