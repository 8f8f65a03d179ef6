"""Analysis commands: ``rlimpact evaluate`` and ``rlimpact dataset export``. No servers needed."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from services.cli.common import (
    add_recipe_arguments,
    fraction,
    load_impact_model,
    recipe_config,
)
from services.cli.offline import featurize_replays
from shared.settings import Settings

if TYPE_CHECKING:
    from services.trainer.compare import CrossValidation
    from services.trainer.config import TrainConfig
    from services.trainer.evaluate import AucInterval
    from shared.features.table import FeatureTable
    from shared.model import ImpactModel

Metrics = dict[str, dict[str, float]]  # per event, per metric name
METRICS_FILE = "metrics.json"
CROSSVAL_FILE = "crossval.json"


def register(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="impact model vs a ball-only baseline on held-out replays; PNG plots",
    )
    evaluate.add_argument(
        "replays",
        nargs="*",
        type=Path,
        help="folders of replays, taken together (default: $REPLAYS_DIR/corpus)",
    )
    evaluate.add_argument("--model", type=Path, help="ONNX model (default: the shipped model)")
    evaluate.add_argument(
        "--out", type=Path, help="folder for the PNGs and metrics.json (default: DATA_DIR/evaluate)"
    )
    evaluate.add_argument(
        "--seed", type=int, default=0, help="split seed: use the model's 'train --local --seed'"
    )
    evaluate.add_argument("--val-fraction", type=fraction, default=0.2, help="share held out")
    evaluate.add_argument("--baseline-epochs", type=int, default=6)
    evaluate.set_defaults(func=cmd_evaluate)

    crossval = commands.add_parser(
        "crossval",
        help="the training recipe vs the baseline's, retrained k times: every replay held out once",
    )
    crossval.add_argument(
        "replays",
        nargs="*",
        type=Path,
        help="folders of replays, taken together (default: $REPLAYS_DIR/corpus)",
    )
    crossval.add_argument("--folds", type=int, default=5, help="folds of replays, dealt by file")
    add_recipe_arguments(crossval)
    crossval.add_argument("--baseline-epochs", type=int, default=6)
    crossval.add_argument(
        "--train-share", type=float, default=1.0,
        help="train on this share of each fold's training replays (a learning curve's point)",
    )  # fmt: skip
    crossval.add_argument(
        "--out", type=Path, help=f"folder for {CROSSVAL_FILE} (default: DATA_DIR/crossval)"
    )
    crossval.set_defaults(func=cmd_crossval)

    dataset = commands.add_parser("dataset", help="feature datasets")
    actions = dataset.add_subparsers(dest="action", required=True)
    export = actions.add_parser(
        "export", help="featurize replays to Parquet: one file per replay, one row per frame+player"
    )
    export.add_argument("paths", nargs="+", type=Path, help="replay files or folders")
    export.add_argument("--out", type=Path, required=True, help="output folder")
    export.set_defaults(func=cmd_dataset_export)


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from services.trainer.compare import BASELINE, MODEL, baseline_config
    from services.trainer.data import model_split, scoped_tables
    from services.trainer.evaluate import (
        BALL_INPUTS,
        CALIBRATION_FILE,
        IMPACT_FILE,
        TorchPredictor,
        auc_intervals,
        calibration_plot,
        forecasts,
        format_report,
        impact_plot,
    )
    from services.trainer.train import train_on_split
    from shared.impact import credit_touches, score_credits, team_score_probability
    from shared.model import predict_table

    out = args.out or settings.data_dir / "evaluate"
    folders = replay_folders(args.replays, settings)
    model = load_impact_model(args.model, settings)
    tables = [table for _, table in featurize_replays(folders, settings)]
    scoped, other = scoped_tables(tables)
    if len(scoped) < 2:
        raise SystemExit(f"rlimpact: need at least 2 usable Soccar replays in {_named(folders)}")
    try:
        trained, held_out = model_split(scoped, model.split, args.val_fraction, args.seed)
    except ValueError as error:
        raise SystemExit(f"rlimpact: {model.version}: {error}") from None
    print(_split_note(model, args, len(held_out)), file=sys.stderr)
    print(
        f"baseline: the impact network on {', '.join(BALL_INPUTS)} only, same trainer and split",
        file=sys.stderr,
    )
    baseline = train_on_split(
        trained, held_out, baseline_config(args.baseline_epochs, args.seed, args.val_fraction)
    )
    results = {
        MODEL: forecasts(held_out, model),
        BASELINE: forecasts(held_out, TorchPredictor(baseline.model)),
    }
    rows = len(results[MODEL].scored)
    print(
        f"\nmodel {model.version} vs ball-only baseline on {len(held_out)} held-out replays of "
        f"{len(scoped)} Soccar replays on standard arenas (split by file, seed {args.seed}); "
        f"{rows} (live frame, team) rows; events within {settings.horizon_seconds:g} s"
    )
    intervals = auc_intervals(results)
    print(format_report(results, intervals))
    other_results = {}
    if other:
        other_results = {
            MODEL: forecasts(other, model),
            BASELINE: forecasts(other, TorchPredictor(baseline.model)),
        }
        print(
            f"\nout of scope, for information: the {len(other)} replays of other modes or arenas "
            f"({_modes(other)}), never trained on; {len(other_results[MODEL].scored)} rows"
        )
        print(format_report(other_results, auc_intervals(other_results)))
    out.mkdir(parents=True, exist_ok=True)
    calibration_plot(results, out / CALIBRATION_FILE, settings.horizon_seconds)
    example = max(held_out, key=lambda t: (len(t.goals), t.replay_id))
    p_score = team_score_probability(example, predict_table(example, model))
    credits = credit_touches(example, p_score)
    title = f"replay {example.replay_id[:16]}: P(score within {settings.horizon_seconds:g} s)"
    scores = score_credits(example, credits)
    impact_plot(example, p_score, credits, scores, out / IMPACT_FILE, title)
    summary = {
        "model": model.version,
        "held_out_replays": sorted(t.replay_id for t in held_out),
        "rows": rows,
        "metrics": {name: result.metrics() for name, result in results.items()},
        "roc_auc_intervals": _intervals_json(intervals),
        "out_of_scope": sorted(t.replay_id for t in other),
        "out_of_scope_metrics": {name: r.metrics() for name, r in other_results.items()},
    }
    (out / METRICS_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nwrote {out / CALIBRATION_FILE}, {out / IMPACT_FILE}, {out / METRICS_FILE}")
    return 0


def _split_note(model: ImpactModel, args: argparse.Namespace, held_out: int) -> str:
    if model.split is None:
        return (
            f"note: {model.version} records no training split: held out are the {held_out} "
            f"replays of the --seed {args.seed} --val-fraction {args.val_fraction:g} split, "
            "which are unseen only if the model was trained with those (the shipped one was)"
        )
    return (
        f"held out: the {held_out} replays {model.version} was not trained on (its recorded "
        "split; --seed only seeds the baseline)"
    )


def cmd_crossval(args: argparse.Namespace, settings: Settings) -> int:
    from services.trainer.compare import MODEL, baseline_config, cross_validate
    from services.trainer.evaluate import auc_intervals, format_report

    config = recipe_config(args)
    out = args.out or settings.data_dir / "crossval"
    folders = replay_folders(args.replays, settings)
    tables = [table for _, table in featurize_replays(folders, settings)]
    baseline = baseline_config(args.baseline_epochs, args.seed, args.val_fraction)
    with tqdm(total=args.folds, desc="folds", unit="fold", file=sys.stderr) as bar:
        try:
            result = cross_validate(
                tables, config, baseline, args.folds, lambda _: bar.update(), args.train_share
            )
        except ValueError as error:
            raise SystemExit(f"rlimpact: {error}") from None
    fold_metrics = [{name: r.metrics() for name, r in f.results.items()} for f in result.folds]
    _print_folds(result, fold_metrics, config)
    pooled = result.pooled
    print(f"every held-out replay together: {len(pooled[MODEL].scored)} (live frame, team) rows")
    intervals = auc_intervals(pooled)
    print(format_report(pooled, intervals))
    summary = {
        "recipe": {"epochs": config.fit.epochs, "members": config.members, "seed": config.fit.seed},
        "train_share": args.train_share,
        "folds": [
            {
                "held_out_replays": fold.held_out,
                "trained_on": len(fold.trained_on),
                "stopped_on": len(fold.stopped_on),
                "metrics": metrics,
            }
            for fold, metrics in zip(result.folds, fold_metrics, strict=True)
        ],
        "metrics": {name: forecast.metrics() for name, forecast in pooled.items()},
        "roc_auc_intervals": _intervals_json(intervals),
        "out_of_scope": result.out_of_scope,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / CROSSVAL_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nwrote {out / CROSSVAL_FILE}")
    return 0


def _print_folds(
    result: CrossValidation, fold_metrics: list[dict[str, Metrics]], config: TrainConfig
) -> None:
    from services.trainer.compare import BASELINE, MODEL

    replays = sum(len(fold.held_out) for fold in result.folds)
    print(
        f"\nthe training recipe (--epochs {config.fit.epochs} --members {config.members} "
        f"--seed {config.fit.seed}) vs the ball-only baseline's, {len(result.folds)}-fold "
        f"cross-validation of {replays} Soccar replays on standard arenas: each fold held out "
        f"once, both retrained on the others (early stopping on {config.val_fraction:.0%} of them)"
    )
    for number, (fold, metrics) in enumerate(zip(result.folds, fold_metrics, strict=True), 1):
        print(
            f"  fold {number}: {len(fold.held_out)} held out, trained on {len(fold.trained_on)}, "
            f"stopped on {len(fold.stopped_on)}; P(score) ROC AUC "
            f"{MODEL} {metrics[MODEL]['score']['roc_auc']:.4f}, "
            f"{BASELINE} {metrics[BASELINE]['score']['roc_auc']:.4f}"
        )


def replay_folders(paths: list[Path], settings: Settings) -> list[Path]:
    """The folders asked for (default: the corpus), each checked to exist."""
    folders = paths or [settings.replays_dir / "corpus"]
    for folder in folders:
        if not folder.is_dir():
            raise SystemExit(f"rlimpact: no such folder: {folder}")
    return folders


def _named(folders: list[Path]) -> str:
    return ", ".join(str(folder) for folder in folders)


def _intervals_json(intervals: dict[str, dict[str, AucInterval]]) -> dict[str, object]:
    return {
        event: {name: [i.low, i.high] for name, i in by_name.items()}
        for event, by_name in intervals.items()
    }


def _modes(tables: list[FeatureTable]) -> str:
    """'rumble 5, hoops 3, ...': how many replays of each mode, other arenas as 'other arena'."""
    from shared.scope import SOCCAR, standard_arena

    counts = Counter(
        (t.game_mode or SOCCAR) if standard_arena(t.map_name) else "other arena" for t in tables
    )
    return ", ".join(f"{mode} {n}" for mode, n in counts.most_common())


def cmd_dataset_export(args: argparse.Namespace, settings: Settings) -> int:
    from shared.features.dataset import write_features
    from shared.features.table import FEATURE_SCHEMA_VERSION, N_FEATURES

    tables = featurize_replays(args.paths, settings)
    if not tables:
        raise SystemExit("rlimpact: no usable replays to export")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = 0
    for path, table in tqdm(tables, desc="write", unit="file", file=sys.stderr):
        write_features(table, args.out / f"{path.stem}.parquet")
        rows += table.features.shape[0] * table.features.shape[1]
    print(
        f"wrote {len(tables)} Parquet files, {rows} rows (frame, player) x {N_FEATURES} features, "
        f"feature schema v{FEATURE_SCHEMA_VERSION}, to {args.out}"
    )
    return 0
