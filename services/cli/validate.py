"""``rlimpact validate``: how far impact ratings can be trusted (services/trainer/validity.py).

Every replay is scored by :func:`shared.impact.score_replay`, the code path of
``rlimpact score``; the numbers are then cut into halves (and quarters) of live time. Impact
is measured with the rating's weights cross-fitted (each match rated with weights fitted on
the other folds of matches, ``services/trainer/rating_fit.py``), and with the shipped weights
(fitted on these matches when they are corpus + more: in-sample). ``rlimpact fit-rating``
fits the weights to ship.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from services.cli.common import add_recipe_arguments, load_impact_model, recipe_config
from services.cli.offline import featurize_replays
from shared.rating import SHIPPED_WEIGHTS, RatingWeights
from shared.settings import Settings

if TYPE_CHECKING:
    from services.parser.header import PlayerStats
    from services.trainer.evaluate import TeamForecasts
    from services.trainer.statistics import Estimate
    from services.trainer.validity import MatchParts, Prediction, Reliability
    from shared.features.table import FeatureTable
    from shared.model import Predictor

VALIDITY_FILE = "validity.json"
VALIDITY_PLOT = "validity.png"
SCORE_POINTS = "score points"  # the header's in-game score, whole matches only
SEGMENTS = 4
SHIPPED_IMPACT = "impact, shipped"  # impact under SHIPPED_WEIGHTS (in-sample on corpus + more)


def register(commands: argparse._SubParsersAction) -> None:
    validate = commands.add_parser(
        "validate",
        help="reliability and predictive validity of impact ratings, next to simple baselines",
    )
    _add_replay_arguments(validate)
    validate.add_argument(
        "--out",
        type=Path,
        help=f"folder for {VALIDITY_FILE}, {VALIDITY_PLOT} (default: DATA_DIR/validate)",
    )
    validate.add_argument("--rounds", type=int, default=1000, help="bootstrap resamples")
    validate.add_argument(
        "--folds", type=int, default=0,
        help="instead of --model: retrain the recipe (below) once per fold of the replays and "
        "score each replay with the model that never saw it",
    )  # fmt: skip
    validate.add_argument(
        "--rating-folds", type=int,
        help="folds of matches the rating's weights are cross-fitted in (default 10; 0: leave "
        "one match out)",
    )  # fmt: skip
    _add_pace_argument(validate)
    add_recipe_arguments(validate)
    validate.set_defaults(func=cmd_validate)
    fit = commands.add_parser(
        "fit-rating",
        help="fit the rating's weights (shared/rating.py) on replays scored by the shipped model",
    )
    _add_replay_arguments(fit)
    _add_pace_argument(fit)
    fit.set_defaults(func=cmd_fit_rating)


def _add_pace_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pace-weight", type=_pace_weights, default=None, metavar="W|search",
        help="pace's weight in the rating's fit: a number, or 'search' to search it along the "
        "other weights (default: the fixed weight of services/trainer/rating_fit.py)",
    )  # fmt: skip


def _pace_weights(text: str) -> tuple[float, ...]:
    from services.trainer.rating_fit import PACE_SEARCH

    if text == "search":
        return PACE_SEARCH
    try:
        return (float(text),)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number nor 'search': {text!r}") from None


def _pace(args: argparse.Namespace) -> tuple[float, ...]:
    from services.trainer.rating_fit import GRID

    return args.pace_weight or GRID["pace"]


def _add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="*", type=Path,
        help="replay files or folders (default: $REPLAYS_DIR/corpus and $REPLAYS_DIR/more)",
    )  # fmt: skip
    parser.add_argument("--model", type=Path, help="ONNX model (default: the shipped model)")


def _replay_paths(args: argparse.Namespace, settings: Settings) -> list[Path]:
    return args.paths or [settings.replays_dir / "corpus", settings.replays_dir / "more"]


def cmd_validate(args: argparse.Namespace, settings: Settings) -> int:
    from services.trainer.evaluate import TeamForecasts, bootstrap_auc_intervals, roc_auc
    from services.trainer.rating_fit import FOLDS
    from services.trainer.validity import MIN_LIVE_MINUTES, validity_plot
    from shared import scope

    paths = _replay_paths(args, settings)
    featurized = featurize_replays(paths, settings)
    tables = [t for _, t in featurized]
    in_scope = {t.replay_id for t in tables if scope.in_scope(t.map_name, t.game_mode)}
    if args.folds:
        model_name = f"the recipe retrained per fold ({args.folds} folds, out-of-fold forecasts)"
        models = _out_of_fold(tables, args)
    else:
        model = load_impact_model(args.model, settings)
        model_name = f"model {model.version}"
        models = dict.fromkeys(in_scope, model)
    models = {k: m for k, m in models.items() if k in in_scope}
    halves, quarters, forecast_parts = scored_parts(featurized, models)
    if len(halves) < 3:
        raise SystemExit("rlimpact: need at least 3 Soccar replays on standard arenas to validate")
    folds = FOLDS if args.rating_folds is None else args.rating_folds or None
    validation = validate_matches(halves, quarters, args.rounds, folds, _pace(args))
    forecast = TeamForecasts.concat(forecast_parts)
    (auc_interval,) = bootstrap_auc_intervals(
        forecast.scored, {"model": forecast.p_score}, forecast.replay, args.rounds
    ).values()
    summary = {
        "model": model_name,
        "paths": [str(p) for p in paths],
        "matches": len(halves),
        "rounds": args.rounds,
        "rating_weights": {
            "shipped": asdict(SHIPPED_WEIGHTS),
            "folds": len(validation.weights),
            "cross_fitted": [asdict(w) for w in validation.weights],
        },
        "p_score_roc_auc": {
            "value": roc_auc(forecast.scored, forecast.p_score),
            "low": auc_interval.low,
            "high": auc_interval.high,
            "rows": len(forecast.scored),
        },
        **validation.as_json(),
    }
    sources = ", ".join(str(p) for p in paths)
    print(
        f"{model_name}; {len(halves)} Soccar matches on standard arenas with "
        f"{MIN_LIVE_MINUTES:g}+ live minutes from {sources}"
    )
    print(format_summary(summary))
    out = args.out or settings.data_dir / "validate"
    out.mkdir(parents=True, exist_ok=True)
    (out / VALIDITY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    title = f"{model_name}, {len(halves)} matches"
    validity_plot(
        validation.reliability,
        validation.predictions,
        validation.across,
        out / VALIDITY_PLOT,
        title,
    )
    print(f"\nwrote {out / VALIDITY_FILE}, {out / VALIDITY_PLOT}")
    return 0


def scored_parts(
    featurized: list[tuple[Path, FeatureTable]], models: Mapping[str, Predictor]
) -> tuple[list[MatchParts], list[MatchParts], list[TeamForecasts]]:
    """The in-scope replays of 2+ live minutes (those in ``models``) scored and cut in halves
    and quarters, and their forecasts."""
    from services.parser.header import player_stats_of_file
    from services.trainer.evaluate import team_forecasts
    from services.trainer.validity import MIN_LIVE_MINUTES, match_parts
    from shared.impact import live_minutes, score_replay

    halves, quarters, forecast_parts = [], [], []
    for path, table in tqdm(featurized, desc="score", unit="replay", file=sys.stderr):
        if table.replay_id not in models or live_minutes(table) < MIN_LIVE_MINUTES:
            continue
        scored = score_replay(table, models[table.replay_id])
        forecast_parts.append(team_forecasts(table, scored.p_score))
        points = {SCORE_POINTS: header_points(table, player_stats_of_file(path))}
        halves.append(match_parts(table, scored.p_score, scored.credits, 2, points))
        quarters.append(match_parts(table, scored.p_score, scored.credits, SEGMENTS, points))
    return halves, quarters, forecast_parts


def cmd_fit_rating(args: argparse.Namespace, settings: Settings) -> int:
    """Fit the rating's weights on every in-scope match and print them for shared/rating.py."""
    from services.trainer.rating_fit import fit_rating
    from shared import scope

    paths = _replay_paths(args, settings)
    tables = featurize_replays(paths, settings)
    model = load_impact_model(args.model, settings)
    models = {t.replay_id: model for _, t in tables if scope.in_scope(t.map_name, t.game_mode)}
    halves, quarters, forecasts = scored_parts(tables, models)
    if len(halves) < 3:
        raise SystemExit("rlimpact: need at least 3 Soccar replays on standard arenas to fit")
    p_score = np.concatenate([f.p_score for f in forecasts])
    weights, margins = fit_rating({2: halves, 4: quarters}, _pace(args))
    print(f"{len(halves)} matches, model {model.version}; margins on them (in-sample): "
          f"predictive validity {margins.prediction:+.3f} over the best baseline, split-half "
          f"r {margins.reliability:+.3f} over touches per minute")  # fmt: skip
    if weights.scale <= 0:
        print("warning: on these matches a larger edge forecasts fewer later goals: too few to fit")
    print("shared/rating.py:")
    print(f"REFERENCE_P_SCORE = {np.exp(np.log(np.clip(p_score, 1e-6, 1)).mean()):.3f}")
    print(
        f"SHIPPED_WEIGHTS = RatingWeights(change={weights.change:g}, held={weights.held:g}, "
        f"touch={weights.touch:g}, pace={weights.pace:g}, scale={weights.scale:.4f})"
    )
    return 0


def _out_of_fold(tables: list[FeatureTable], args: argparse.Namespace) -> dict[str, Predictor]:
    from services.trainer.compare import out_of_fold_models

    config = recipe_config(args)
    with tqdm(total=args.folds, desc="folds", unit="fold", file=sys.stderr) as bar:
        try:
            return dict(out_of_fold_models(tables, config, args.folds, bar.update))
        except ValueError as error:
            raise SystemExit(f"rlimpact: {error}") from None


def header_points(table: FeatureTable, stats: list[PlayerStats]) -> np.ndarray:
    """[P] each player's in-game score points from the header (NaN where it has none), matched
    by platform id, else by name and team."""
    by_id = {s.platform_id: s.score for s in stats if s.platform_id}
    by_name = {(s.name, s.team): s.score for s in stats}
    points = np.full(len(table.players), np.nan)
    for player in table.players:
        found = by_id.get(player.platform_id) if player.platform_id else None
        if found is None:
            found = by_name.get((player.name, player.team))
        if found is not None:
            points[player.index] = found
    return points


@dataclass(frozen=True)
class Validation:
    reliability: Reliability
    predictions: list[Prediction]  # halves, then quarters 1 -> 2-4 and 1-3 -> 4
    across: dict[str, Estimate]
    weights: list[RatingWeights]  # the rating's weights of each fold (cross-fitted)

    def as_json(self) -> dict[str, object]:
        return {
            "split_half_reliability": _reliability_json(self.reliability),
            "predictive_validity": [_prediction_json(p) for p in self.predictions],
            "across_match_reliability": {n: e.as_json() for n, e in self.across.items()},
        }


def validate_matches(
    halves: list[MatchParts],
    quarters: list[MatchParts],
    rounds: int,
    rating_folds: int | None,
    pace: Sequence[float],
) -> Validation:
    """Every measure of services/trainer/validity.py, impact's with the rating's weights
    cross-fitted in ``rating_folds`` folds of matches (None: leaving one out) for the rows
    ``impact``, ``offence``, ``defence`` and ``pace``, searching the pace weights ``pace``,
    and with the shipped ones (SHIPPED_IMPACT)."""
    from services.trainer.rating_fit import cross_fitted
    from services.trainer.validity import (
        PLAYER_METRICS,
        TEAM_METRICS,
        across_match_reliability,
        predictive_validity,
        split_half_reliability,
    )

    shipped = {2: [_with_shipped(m) for m in halves], 4: [_with_shipped(m) for m in quarters]}
    rated, weights = cross_fitted(shipped, rating_folds, pace)
    halves, quarters = rated[2], rated[4]
    ratings = (*PLAYER_METRICS, SHIPPED_IMPACT)
    metrics = (*ratings, *TEAM_METRICS)
    predictions = [predictive_validity(halves, metrics, rounds=rounds)]
    predictions += [predictive_validity(quarters, metrics, s, rounds) for s in (1, 3)]
    return Validation(
        reliability=split_half_reliability(halves, ratings, rounds=rounds),
        predictions=predictions,
        across=across_match_reliability(halves, (*ratings, SCORE_POINTS), rounds),
        weights=weights,
    )


def _with_shipped(match: MatchParts) -> MatchParts:
    """``match`` with its impact under the shipped weights kept as SHIPPED_IMPACT."""
    totals = {**match.player_totals, SHIPPED_IMPACT: match.player_totals["impact"]}
    return replace(match, player_totals=totals)


def _reliability_json(reliability: Reliability) -> dict[str, object]:
    from services.trainer.validity import estimates_json

    return {
        "pooled_standardised": estimates_json(reliability.pooled),
        "pooled_raw": estimates_json(reliability.raw),
        "by_team_size": {str(k): estimates_json(v) for k, v in reliability.by_team_size.items()},
        "margins": estimates_json(reliability.versus),
    }


def _prediction_json(prediction: Prediction) -> dict[str, object]:
    from services.trainer.validity import estimates_json

    return {
        "earlier_parts": prediction.split,
        "parts": prediction.n_parts,
        "spearman": estimates_json(prediction.spearman),
        "margins": estimates_json(prediction.versus),
    }


def _estimate(entry: dict[str, float]) -> str:
    return f"{entry['value']:+.3f} [{entry['low']:+.3f}, {entry['high']:+.3f}]"


def format_summary(summary: dict) -> str:
    """The printed report of :func:`validate_matches`' summary."""
    from services.trainer.validity import Prediction

    reliability = summary["split_half_reliability"]
    sizes = reliability["by_team_size"]
    pooled = reliability["pooled_standardised"]
    any_rating = next(iter(pooled.values()))
    auc = summary["p_score_roc_auc"]
    weights = summary["rating_weights"]
    chosen = Counter(_weights_text(w, False) for w in weights["cross_fitted"]).most_common()
    width = max(len(n) for n in (*pooled, *summary["predictive_validity"][0]["spearman"])) + 1
    lines = [
        f"the forecast: P(score within 10 s) ROC AUC {auc['value']:.3f} "
        f"[{auc['low']:.3f}, {auc['high']:.3f}] over {auc['rows']} (live frame, team) rows",
        f"impact: the rating's weights cross-fitted, each match rated with weights fitted on "
        f"the other folds of {weights['folds']} (in how many folds: "
        + "; ".join(f"{text}: {n}" for text, n in chosen)
        + f"); {SHIPPED_IMPACT}: {_weights_text(weights['shipped'])}",
        "",
        "split-half reliability: Pearson r of a player's rating per live minute in the first "
        "half of a match against the second (players on the pitch in both halves); 95 % "
        f"intervals over {summary['rounds']} resamples of the matches",
        f"  {'rating':<{width}} {'within team size, pooled':<26} "
        + " ".join(
            f"{size + 'v' + size + ' (n ' + str(next(iter(v.values()))['n']) + ')':<26}"
            for size, v in sizes.items()
        )
        + f" {'team sizes mixed':<26}",
    ]
    for rating, entry in pooled.items():
        cells = [_estimate(entry)] + [_estimate(v[rating]) for v in sizes.values()]
        cells.append(_estimate(reliability["pooled_raw"][rating]))
        lines.append(f"  {rating:<{width}} " + " ".join(f"{c:<26}" for c in cells))
    lines.append(f"  (pooled: each half standardised per team size; {any_rating['n']} pairs)")
    for name, entry in reliability["margins"].items():
        lines.append(f"  {name}: {_estimate(entry)}")
    lines += [
        "",
        "predictive validity: Spearman of a team's edge over the earlier parts of a match (its "
        "players' rating per minute minus the other team's) with the goal difference of the "
        f"later parts; {summary['matches']} matches, each from both sides",
    ]
    predictions = summary["predictive_validity"]
    headers = [Prediction(p["earlier_parts"], p["parts"], {}, {}).label for p in predictions]
    lines.append(f"  {'edge in':<{width}} " + " ".join(f"{h:<26}" for h in headers))
    for metric in predictions[0]["spearman"]:
        cells = [_estimate(p["spearman"][metric]) for p in predictions]
        lines.append(f"  {metric:<{width}} " + " ".join(f"{c:<26}" for c in cells))
    for name in predictions[0]["margins"]:
        cells = [_estimate(p["margins"][name]) for p in predictions]
        lines.append(f"  {name}")
        lines.append(f"  {'':<{width}} " + " ".join(f"{c:<26}" for c in cells))
    across = summary["across_match_reliability"]
    lines += [
        "",
        "across matches: Pearson r of a recurring player's (by platform id) mean standardised "
        "rating over odd appearances against even ones; intervals over resampled players",
    ]
    for rating, entry in across.items():
        lines.append(f"  {rating:<{width}} {_estimate(entry)}  ({entry['n']} players)")
    return "\n".join(lines)


def _weights_text(weights: dict[str, float], scale: bool = True) -> str:
    text = (
        f"change {weights['change']:g}, held {weights['held']:g}, touch {weights['touch']:g}, "
        f"pace {weights.get('pace', 0.0):g}"
    )
    return text + f", scale {weights['scale']:.4f}" if scale else text
