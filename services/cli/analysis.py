"""Analysis commands: ``rlimpact evaluate`` and ``rlimpact dataset export``. No servers needed."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from services.cli.common import load_impact_model
from services.cli.offline import featurize_replays
from shared.settings import Settings

if TYPE_CHECKING:
    from services.featurizer.features import FeatureTable

METRICS_FILE = "metrics.json"


def register(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="impact model vs a ball-only baseline on held-out replays; PNG plots",
    )
    evaluate.add_argument(
        "replays", nargs="?", type=Path, help="folder of replays (default: $REPLAYS_DIR/corpus)"
    )
    evaluate.add_argument("--model", type=Path, help="ONNX model (default: the shipped model)")
    evaluate.add_argument(
        "--out", type=Path, help="folder for the PNGs and metrics.json (default: DATA_DIR/evaluate)"
    )
    evaluate.add_argument(
        "--seed", type=int, default=0, help="split seed: use the model's 'train --local --seed'"
    )
    evaluate.add_argument("--val-fraction", type=float, default=0.2, help="share held out")
    evaluate.add_argument("--baseline-epochs", type=int, default=6)
    evaluate.set_defaults(func=cmd_evaluate)

    dataset = commands.add_parser("dataset", help="feature datasets")
    actions = dataset.add_subparsers(dest="action", required=True)
    export = actions.add_parser(
        "export", help="featurize replays to Parquet: one file per replay, one row per frame+player"
    )
    export.add_argument("paths", nargs="+", type=Path, help="replay files or folders")
    export.add_argument("--out", type=Path, required=True, help="output folder")
    export.set_defaults(func=cmd_dataset_export)


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from services.scorer.score import (
        credit_touches,
        predict_table,
        score_credits,
        team_score_probability,
    )
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
    from services.trainer.train import (
        TrainConfig,
        scoped_tables,
        split_by_replay,
        train_impact_model,
    )

    folder = args.replays or settings.replays_dir / "corpus"
    out = args.out or settings.data_dir / "evaluate"
    if not 0 < args.val_fraction < 1:
        raise SystemExit("rlimpact: --val-fraction must be between 0 and 1")
    if not folder.is_dir():
        raise SystemExit(f"rlimpact: no such folder: {folder}")
    model = load_impact_model(args.model, settings)
    tables = [table for _, table in featurize_replays([folder], settings)]
    scoped, other = scoped_tables(tables)
    if len(scoped) < 2:
        raise SystemExit(f"rlimpact: need at least 2 usable Soccar replays in {folder}")
    _, held_out = split_by_replay(scoped, args.val_fraction, args.seed)
    print(
        f"baseline: the impact network on {', '.join(BALL_INPUTS)} only, same trainer and split",
        file=sys.stderr,
    )
    baseline = train_impact_model(
        tables,
        TrainConfig(
            epochs=args.baseline_epochs,
            seed=args.seed,
            val_fraction=args.val_fraction,
            inputs=BALL_INPUTS,
            hidden=(64, 64),
            milestone_every=0,
        ),
    )
    results = {
        "model": forecasts(held_out, model),
        "ball-only": forecasts(held_out, TorchPredictor(baseline.model)),
    }
    rows = len(results["model"].scored)
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
            "model": forecasts(other, model),
            "ball-only": forecasts(other, TorchPredictor(baseline.model)),
        }
        print(
            f"\nout of scope, for information: the {len(other)} replays of other modes or arenas "
            f"({_modes(other)}), never trained on; {len(other_results['model'].scored)} rows"
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
        "roc_auc_intervals": {
            event: {name: [i.low, i.high] for name, i in by_name.items()}
            for event, by_name in intervals.items()
        },
        "out_of_scope": sorted(t.replay_id for t in other),
        "out_of_scope_metrics": {name: r.metrics() for name, r in other_results.items()},
    }
    (out / METRICS_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nwrote {out / CALIBRATION_FILE}, {out / IMPACT_FILE}, {out / METRICS_FILE}")
    return 0


def _modes(tables: list[FeatureTable]) -> str:
    """'rumble 5, hoops 3, ...': how many replays of each mode, other arenas as 'other arena'."""
    from shared.scope import SOCCAR, standard_arena

    counts = Counter(
        (t.game_mode or SOCCAR) if standard_arena(t.map_name) else "other arena" for t in tables
    )
    return ", ".join(f"{mode} {n}" for mode, n in counts.most_common())


def cmd_dataset_export(args: argparse.Namespace, settings: Settings) -> int:
    from services.featurizer.dataset import write_features
    from services.featurizer.features import FEATURE_SCHEMA_VERSION, N_FEATURES

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
