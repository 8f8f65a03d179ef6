"""The local stack: start and stop it, migrate, and show where things stand."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time

from services.cli.instances import (
    SUPERVISOR,
    plan,
    read_pid,
    read_state,
    service_pid,
    service_pid_files,
    supervisor_pid,
)
from services.cli.supervisor import add_scale_arguments, describe_exit
from shared import process
from shared.settings import REPO_ROOT, Settings

UP_TIMEOUT_SECONDS = 30.0
DOWN_MARGIN_SECONDS = 10.0


def register(commands: argparse._SubParsersAction) -> None:
    up = commands.add_parser(
        "up", help="start Kafka, Postgres and the supervised services locally (detached)"
    )
    add_scale_arguments(up)
    up.set_defaults(func=cmd_up)
    down = commands.add_parser("down", help="stop the services (and, with --all, Kafka/Postgres)")
    down.add_argument("--all", action="store_true", help="also stop Kafka and Postgres")
    down.set_defaults(func=cmd_down)
    commands.add_parser("migrate", help="apply SQL migrations and create topics").set_defaults(
        func=cmd_migrate
    )

    status = commands.add_parser("status", help="services, replays by state, models")
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
    for line in service_lines(settings):
        print(line)

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

    asyncio.run(status())
    return 0


def service_lines(settings: Settings) -> list[str]:
    """Where each service instance stands: from the running supervisor, else the pid files
    (a pid file whose process is gone or is another program is reported as stale)."""
    state = read_state(settings)
    if state is None:
        return ["supervisor: not running", *_unsupervised_lines(settings)]
    lines = [f"supervisor: pid {state['pid']}" + (", stopping" if state["stopping"] else "")]
    for item in state["instances"]:
        pid = service_pid(settings, item["label"], item["service"])
        if pid is not None:
            where = f"up, pid {pid}"
        elif item["last_exit"] is not None:
            where = f"restarting ({describe_exit(item['last_exit'])})"
        else:
            where = "starting"
        lines.append(
            f"  {item['label']:<13} {where}; restarts {item['restarts']};"
            f" metrics :{item['metrics_port']}"
        )
    return lines


def _unsupervised_lines(settings: Settings) -> list[str]:
    lines = []
    for path, label, service in service_pid_files(settings):
        if (pid := service_pid(settings, label, service)) is not None:
            lines.append(f"  {label:<13} up, pid {pid} (not supervised)")
        else:
            lines.append(f"  {label:<13} down (stale pid file: pid {read_pid(path)})")
    return lines


# ---------------------------------------------------------------- local stack


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    subprocess.run(["bash", str(REPO_ROOT / "deploy" / "stack.sh"), "start"], check=True)
    cmd_migrate(args, settings)
    settings.inbox_dir.mkdir(parents=True, exist_ok=True)
    if (pid := supervisor_pid(settings)) is not None:
        print(f"supervisor already running (pid {pid}); 'rlimpact down' first to change --scale")
    else:
        try:
            plan(args.services, args.scale)
        except ValueError as error:
            raise SystemExit(f"rlimpact: {error}") from None
        if strays := _unsupervised(settings):
            raise SystemExit(
                f"rlimpact: {', '.join(strays)} run without the supervisor: 'rlimpact down' first"
            )
        if not _start_supervisor(args, settings):
            return 1
    print("\n".join(service_lines(settings)))
    print(f"logs in {settings.log_dir}; drop .replay files into {settings.inbox_dir}")
    return 0


def _start_supervisor(args: argparse.Namespace, settings: Settings) -> bool:
    """Start ``rlimpact supervise`` detached; wait until every instance has been started."""
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    scale = ",".join(f"{name}={count}" for name, count in args.scale.items())
    command = [sys.executable, "-m", "services.cli", "supervise"]
    command += ["--services", ",".join(args.services)] + (["--scale", scale] if scale else [])
    log_path = settings.log_dir / f"{SUPERVISOR}.log"
    with log_path.open("ab") as log:
        started = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=REPO_ROOT,
        )
    deadline = time.monotonic() + UP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if started.poll() is not None:
            print(f"rlimpact: the supervisor exited at once; see {log_path}", file=sys.stderr)
            return False
        state = read_state(settings)
        if state and all(
            item["pid"] or item["last_exit"] is not None for item in state["instances"]
        ):
            return True
        time.sleep(0.1)
    print(f"rlimpact: the supervisor did not start the services; see {log_path}", file=sys.stderr)
    return False


def cmd_down(args: argparse.Namespace, settings: Settings) -> int:
    if (pid := supervisor_pid(settings)) is not None:
        os.kill(pid, signal.SIGTERM)
        if _wait_gone(pid, settings.supervisor_stop_grace_seconds + DOWN_MARGIN_SECONDS):
            print(f"supervisor (pid {pid}) and its services: stopped")
        else:  # its children get SIGTERM when it dies (PR_SET_PDEATHSIG)
            os.kill(pid, signal.SIGKILL)
            print(f"supervisor (pid {pid}) did not stop in time: killed")
    for label, pid in _unsupervised(settings).items():  # left by an older `up`, say
        os.kill(pid, signal.SIGTERM)
        _wait_gone(pid, settings.supervisor_stop_grace_seconds)
        print(f"{label}: stopped")
    if args.all:
        subprocess.run(["bash", str(REPO_ROOT / "deploy" / "stack.sh"), "stop"], check=True)
    return 0


def _unsupervised(settings: Settings) -> dict[str, int]:
    """Service instances that run, by their pid files, while no supervisor does."""
    if supervisor_pid(settings) is not None:
        return {}
    found = {}
    for _, label, service in service_pid_files(settings):
        if (pid := service_pid(settings, label, service)) is not None:
            found[label] = pid
    return found


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not process.alive(pid):
            return True
        time.sleep(0.1)
    return not process.alive(pid)
