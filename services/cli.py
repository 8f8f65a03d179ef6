"""``rlimpact``: run the local stack, feed it, train, and score replays offline."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from shared.settings import REPO_ROOT, SERVICE_NAMES, Settings, get_settings

DEFAULT_MODEL_FILE = "impact.onnx"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    return args.func(args, get_settings())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlimpact", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start Kafka, Postgres and the five services locally")
    up.set_defaults(func=cmd_up)
    down = commands.add_parser("down", help="stop the services (and, with --all, Kafka/Postgres)")
    down.add_argument("--all", action="store_true", help="also stop Kafka and Postgres")
    down.set_defaults(func=cmd_down)
    commands.add_parser("migrate", help="apply SQL migrations and create topics").set_defaults(
        func=cmd_migrate
    )

    ingest = commands.add_parser("ingest", help="send replay files or folders into the pipeline")
    ingest.add_argument("paths", nargs="+", type=Path)
    ingest.set_defaults(func=cmd_ingest)

    train = commands.add_parser("train", help="ask the trainer service to train (or --local)")
    train.add_argument(
        "--promote", choices=["if-none-active", "always", "never"], default="if-none-active"
    )
    train.add_argument(
        "--local",
        type=Path,
        metavar="REPLAY_DIR",
        help="train in-process on the replays of this folder instead (no servers needed)",
    )
    train.add_argument("--out", type=Path, help="with --local: where to write the ONNX model")
    train.add_argument("--epochs", type=int, default=6)
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(func=cmd_train)

    score = commands.add_parser("score", help="score replay files offline (no servers needed)")
    score.add_argument("paths", nargs="+", type=Path, help="replay files or folders")
    score.add_argument("--model", type=Path, help="ONNX model (default: the shipped model)")
    score.set_defaults(func=cmd_score)

    status = commands.add_parser("status", help="replays by state, models, train jobs")
    status.set_defaults(func=cmd_status)
    return parser


# ---------------------------------------------------------------- offline


def replay_files(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(path.rglob("*.replay"))
        elif path.exists():
            yield path
        else:
            raise SystemExit(f"rlimpact: no such file or folder: {path}")


def cmd_score(args: argparse.Namespace, settings: Settings) -> int:
    from services.featurizer.features import featurize
    from services.parser.parse import ReplayParseError, parse_replay_file
    from services.scorer.score import ImpactModel, score_table
    from shared.storage import sha256_file

    model_path = args.model or settings.default_model_dir / DEFAULT_MODEL_FILE
    if not model_path.exists():
        raise SystemExit(f"rlimpact: no model at {model_path}: train one with 'rlimpact train'")
    model = ImpactModel(model_path)
    files = list(replay_files(args.paths))
    failures = 0
    print(f"model {model.version}  (impact: mean 100 x (P(score) - P(concede)) over the replay)")
    for path in tqdm(files, desc="score", unit="replay", disable=len(files) < 2, file=sys.stderr):
        try:
            parsed = parse_replay_file(path, sha256_file(path), settings.fps)
        except ReplayParseError as error:
            failures += 1
            print(f"\n{path.name}: rejected: {error.reason}")
            continue
        scores = score_table(featurize(parsed, settings.horizon_seconds), model)
        print(
            f"\n{path.name}  ({parsed.team_size}v{parsed.team_size}, {parsed.n_frames} frames, "
            f"{len(parsed.goals)} goals)"
        )
        print(f"  {'player':<24} {'team':<7} {'impact':>8}")
        for score in sorted(scores, key=lambda s: (s.team, -s.impact)):
            team = "blue" if score.team == 0 else "orange"
            print(f"  {score.name[:24]:<24} {team:<7} {score.impact:>8.2f}")
    return 1 if failures == len(files) else 0


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    if args.local is None:
        return asyncio.run(_request_training(settings, args.promote))
    from services.featurizer.features import featurize
    from services.parser.parse import ReplayParseError, parse_replay_file
    from services.trainer.train import TrainConfig, export_onnx, train_impact_model
    from shared.storage import sha256_file

    out = args.out or settings.default_model_dir / DEFAULT_MODEL_FILE
    tables = []
    for path in tqdm(list(replay_files([args.local])), desc="featurize", unit="replay"):
        try:
            parsed = parse_replay_file(path, sha256_file(path), settings.fps)
        except ReplayParseError:
            continue
        tables.append(featurize(parsed, settings.horizon_seconds))
    result = train_impact_model(tables, TrainConfig(epochs=args.epochs, seed=args.seed))
    out.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(result.model, out, f"impact-local-seed{args.seed}-{len(tables)}replays")
    print(
        f"trained on {len(result.train_replays)} replays, validated on "
        f"{len(result.val_replays)}; wrote {out}"
    )
    for name, value in result.metrics.items():
        print(f"  {name:<22} {value:.4f}")
    return 0


# ---------------------------------------------------------------- online


async def _request_training(settings: Settings, promote: str) -> int:
    from shared.events import TRAIN_REQUESTED, TrainRequested
    from shared.service import service_context

    async with service_context("cli", settings) as ctx:
        await ctx.producer.send(
            TRAIN_REQUESTED, TrainRequested(requested_by="cli", promote=promote)
        )
    print("train.requested sent; the trainer service picks it up ('rlimpact status' to follow)")
    return 0


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_ingest(settings, list(replay_files(args.paths))))


async def _ingest(settings: Settings, files: list[Path]) -> int:
    from services.ingestor.service import ingest_path
    from shared.service import service_context
    from shared.storage import BlobStore

    store = BlobStore(settings.blob_dir)
    new = 0
    async with service_context("cli", settings) as ctx:
        for path in tqdm(files, desc="ingest", unit="file"):
            new += await ingest_path(path, store, ctx, source="cli") is not None
    print(f"{new} new replays sent, {len(files) - new} duplicates or rejected")
    return 0


def cmd_migrate(_: argparse.Namespace, settings: Settings) -> int:
    async def migrate() -> None:
        from shared import db
        from shared.kafka import ensure_topics

        pool = await db.connect(settings)
        try:
            applied = await db.migrate(pool)
        finally:
            await pool.close()
        created = await ensure_topics(settings)
        print(f"migrations applied: {applied or 'none'}; topics created: {created or 'none'}")

    asyncio.run(migrate())
    return 0


def cmd_status(_: argparse.Namespace, settings: Settings) -> int:
    async def status() -> None:
        from shared import db

        pool = await db.connect(settings)
        try:
            async with pool.acquire() as conn:
                counts = await db.status_counts(conn)
                models = await db.list_models(conn)
        finally:
            await pool.close()
        print("replays:", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none")
        for model in models:
            print(
                f"model {model.id} {model.version} [{model.status}] "
                f"AUC(score)={model.metrics.get('score_roc_auc', float('nan')):.3f}"
            )
        print(
            "services:",
            ", ".join(f"{n} {'up' if _pid(settings, n) else 'down'}" for n in SERVICE_NAMES),
        )

    asyncio.run(status())
    return 0


# ---------------------------------------------------------------- local stack


def _run_dir(settings: Settings) -> Path:
    path = settings.data_dir / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _pid(settings: Settings, service: str) -> int | None:
    pid_file = _run_dir(settings) / f"{service}.pid"
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def cmd_up(_: argparse.Namespace, settings: Settings) -> int:
    subprocess.run(["bash", str(REPO_ROOT / "deploy" / "stack.sh"), "start"], check=True)
    cmd_migrate(_, settings)
    logs = settings.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for service in SERVICE_NAMES:
        if _pid(settings, service):
            print(f"{service}: already running")
            continue
        with (logs / f"{service}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", f"services.{service}"],
                stdout=log,
                stderr=log,
                start_new_session=True,
                cwd=REPO_ROOT,
            )
        (_run_dir(settings) / f"{service}.pid").write_text(str(process.pid))
        print(
            f"{service}: started (pid {process.pid}, metrics :{settings.metrics_port(service)},"
            f" log {logs / f'{service}.log'})"
        )
    settings.inbox_dir.mkdir(parents=True, exist_ok=True)
    print(f"drop .replay files into {settings.inbox_dir}")
    return 0


def cmd_down(args: argparse.Namespace, settings: Settings) -> int:
    for service in SERVICE_NAMES:
        if pid := _pid(settings, service):
            os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                if not _pid(settings, service):
                    break
                time.sleep(0.1)
            print(f"{service}: stopped")
    if args.all:
        subprocess.run(["bash", str(REPO_ROOT / "deploy" / "stack.sh"), "stop"], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
