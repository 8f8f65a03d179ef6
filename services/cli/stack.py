"""The local stack: start and stop it, migrate, and show where things stand."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from shared.settings import REPO_ROOT, SERVICE_NAMES, Settings


def register(commands: argparse._SubParsersAction) -> None:
    up = commands.add_parser("up", help="start Kafka, Postgres and the five services locally")
    up.set_defaults(func=cmd_up)
    down = commands.add_parser("down", help="stop the services (and, with --all, Kafka/Postgres)")
    down.add_argument("--all", action="store_true", help="also stop Kafka and Postgres")
    down.set_defaults(func=cmd_down)
    commands.add_parser("migrate", help="apply SQL migrations and create topics").set_defaults(
        func=cmd_migrate
    )

    status = commands.add_parser("status", help="replays by state, models, train jobs")
    status.set_defaults(func=cmd_status)


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
