"""The model registry: list, register, promote; rescore stored replays; train the skill model.

``models promote`` makes a model the active one of its kind (impact or skill) and announces it
on ``model.promoted``: every scorer switches to it within seconds, without a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from services.cli.common import replay_files
from shared.settings import Settings

if TYPE_CHECKING:
    import asyncpg

    from shared.db import ModelRecord


def register(commands: argparse._SubParsersAction) -> None:
    models = commands.add_parser("models", help="list, register and promote models")
    actions = models.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="registered models, newest last").set_defaults(func=cmd_list)
    promote = actions.add_parser("promote", help="make a model the active one of its kind")
    promote.add_argument("model", metavar="ID|VERSION")
    promote.set_defaults(func=cmd_promote)
    add = actions.add_parser("register", help="register an ONNX model file as a candidate")
    add.add_argument("file", type=Path)
    add.add_argument("--promote", action="store_true", help="and make it active")
    add.set_defaults(func=cmd_register)

    rescore = commands.add_parser("rescore", help="score stored replays with another model")
    rescore.add_argument("--model", required=True, metavar="ID|VERSION", help="an impact model")
    rescore.set_defaults(func=cmd_rescore)

    skill = commands.add_parser(
        "train-skill", help="train the skill model offline on planted labels (a machinery test)"
    )
    skill.add_argument("--local", type=Path, required=True, metavar="REPLAY_DIR")
    skill.add_argument(
        "--planted-labels",
        action="store_true",
        help="rate each player by a hidden function of their play (no real ratings ship)",
    )
    skill.add_argument("--limit", type=int, help="use the first N replays that parse")
    skill.add_argument("--out", type=Path, help="where to write the ONNX skill model")
    skill.add_argument("--run-dir", type=Path, help="checkpoints, milestones, loss.png; resumes")
    skill.add_argument("--epochs", type=int, default=40)
    skill.add_argument("--seed", type=int, default=0)
    skill.set_defaults(func=cmd_train_skill)


def cmd_list(_: argparse.Namespace, settings: Settings) -> int:
    from shared import db

    async def show() -> None:
        pool = await db.connect(settings)
        try:
            async with pool.acquire() as conn:
                models = await db.list_models(conn)
        finally:
            await pool.close()
        if not models:
            print("no models registered: 'rlimpact train' or 'rlimpact models register FILE'")
            return
        print(f"{'id':>4}  {'kind':<6} {'status':<9} {'version':<40} key metrics")
        for m in models:
            print(f"{m.id:>4}  {m.kind:<6} {m.status:<9} {m.version:<40} {_key_metrics(m)}")

    asyncio.run(show())
    return 0


def _key_metrics(model: ModelRecord) -> str:
    metrics = model.metrics
    keys = ("score_roc_auc", "concede_roc_auc", "pearson_r", "rmse", "baseline_rmse")
    return "  ".join(f"{k}={metrics[k]:.3f}" for k in keys if k in metrics)


async def _model(conn: asyncpg.Connection, ref: str) -> ModelRecord:
    """The model with this id or version, or a clear error and exit."""
    from shared import db

    if (record := await db.find_model(conn, ref)) is None:
        raise SystemExit(f"rlimpact: no model {ref!r}: see 'rlimpact models list'")
    return record


def cmd_promote(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_promote(settings, args.model))


async def _promote(settings: Settings, ref: str) -> int:
    from shared.registry import promote_and_announce
    from shared.service import service_context

    async with service_context("cli", settings) as ctx:
        async with ctx.pool.acquire() as conn:
            found = await _model(conn, ref)
        record = await promote_and_announce(ctx, found.id)
    print(f"model {record.id} {record.version} is now the active {record.kind} model")
    return 0


def cmd_register(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_register(settings, args.file, args.promote))


async def _register(settings: Settings, file: Path, promote: bool) -> int:
    from shared import db
    from shared.features.table import FEATURE_SCHEMA_VERSION
    from shared.model import META_KIND, ImpactModel, ModelSchemaError
    from shared.registry import register_file
    from shared.service import service_context
    from shared.skill import SkillModel

    if not file.is_file():
        raise SystemExit(f"rlimpact: no such file: {file}")
    try:
        import onnxruntime as ort

        session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        kind = session.get_modelmeta().custom_metadata_map.get(META_KIND, "impact")
        loaded = SkillModel(file) if kind == "skill" else ImpactModel(file)
    except (ModelSchemaError, RuntimeError, ValueError) as error:
        raise SystemExit(f"rlimpact: {file} is not a usable model: {error}") from error
    async with service_context("cli", settings) as ctx, ctx.pool.acquire() as conn:
        if existing := await db.find_model(conn, loaded.version):
            raise SystemExit(
                f"rlimpact: version {loaded.version} is registered already (id {existing.id})"
            )
        record = await register_file(
            conn,
            settings,
            file,
            kind=kind,
            version=loaded.version,
            feature_schema_version=FEATURE_SCHEMA_VERSION,
        )
    print(f"registered {kind} model {record.id} {record.version} as a candidate")
    return await _promote(settings, str(record.id)) if promote else 0


def cmd_rescore(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_rescore(settings, args.model))


async def _rescore(settings: Settings, ref: str) -> int:
    from services.scorer.service import Scorers, load_impact, load_skill, score_replay
    from shared import db
    from shared.service import service_context
    from shared.storage import open_blob_store

    store = open_blob_store(settings)
    async with service_context("cli", settings) as ctx:
        async with ctx.pool.acquire() as conn:
            record = await _model(conn, ref)
            if record.kind != "impact":
                raise SystemExit(
                    f"rlimpact: model {ref!r} is a {record.kind} model; rescore takes an impact "
                    "model (skill estimates come from the active skill model)"
                )
            skill = await db.active_model(conn, "skill")
            replays = await db.featurized_replays(conn)
            done = await db.replays_scored_with(conn, record.id)
        try:
            impact = await load_impact(record, store)
            scorers = Scorers(impact, await load_skill(skill, store) if skill else None)
        except (OSError, RuntimeError, ValueError) as error:
            raise SystemExit(f"rlimpact: cannot load model {record.version}: {error}") from error
        todo = [row for row in replays if row["id"] not in done]
        emitted = failed = 0
        for row in tqdm(todo, desc=f"rescore with {record.version}", unit="replay"):
            try:
                emitted += await score_replay(ctx, row["id"], row["features_uri"], scorers)
            except (OSError, ValueError) as error:
                failed += 1
                print(f"{row['id'][:12]}: not rescored: {error}", file=sys.stderr)
    print(
        f"rescored {len(todo) - failed} replays with {record.version} ({emitted} scores emitted);"
        f" {len(done)} had been scored with it already; {failed} failed"
    )
    return 1 if failed else 0


def cmd_train_skill(args: argparse.Namespace, settings: Settings) -> int:
    if not args.planted_labels:
        raise SystemExit(
            "rlimpact: offline skill training needs --planted-labels; real ratings live in "
            "Postgres ('rlimpact labels import'), and 'rlimpact train' trains on them"
        )
    from services.parser.parse import ReplayParseError
    from services.parser.validate import parse_valid_replay
    from services.trainer.skill import (
        SkillConfig,
        SkillNet,
        export_skill_onnx,
        planted_ratings,
        train_skill_model,
    )
    from shared.features.batch import featurize
    from shared.features.table import FeatureTable
    from shared.storage import sha256_file

    files = list(replay_files([args.local]))
    tables: list[FeatureTable] = []
    for path in tqdm(files, desc="featurize", unit="replay"):
        if args.limit is not None and len(tables) >= args.limit:
            break
        try:
            # the validation rules of every other path: a replay the pipeline rejects is no data
            parsed = parse_valid_replay(path, sha256_file(path), settings.fps, settings.validation)
        except ReplayParseError:
            continue
        tables.append(featurize(parsed, settings.horizon_seconds))
    ratings = {
        (table.replay_id, index): rating
        for table in tables
        for index, rating in planted_ratings(table).items()
    }
    config = SkillConfig().with_fit(epochs=args.epochs, seed=args.seed)
    try:
        result = train_skill_model(tables, ratings, config, run_dir=args.run_dir)
    except ValueError as error:
        raise SystemExit(f"rlimpact: {error}") from error
    print(
        f"planted labels (a test of the machinery, not an accuracy claim): trained on "
        f"{len(result.train_replays)} replays, validated on {len(result.val_replays)}"
    )
    for name, value in result.metrics.items():
        print(f"  {name:<16} {value:.4f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        version = f"skill-planted-seed{args.seed}-{len(tables)}replays"
        assert isinstance(result.model, SkillNet)  # what train_skill_model trains
        export_skill_onnx(result.model, args.out, version, config.stride)
        print(f"wrote {args.out}")
    return 0
