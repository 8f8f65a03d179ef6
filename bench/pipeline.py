"""Replay path throughput: N corpus replays through the running stack (watched folder ->
ingestor -> parser -> featurizer -> scorer -> score rows in Postgres) against the offline
in-process rate of ``rlimpact score`` on the same files, side by side in one run, for 1 and 2
instances of each stage.

    PYTHONPATH=. .venv/bin/python bench/pipeline.py [--replays 100] [--instances 1 2]

Each round starts its own Kafka and Postgres (``deploy/stack.sh``, ports from
``RLIMPACT_BENCH_PORT_OFFSET``, default 900, data in ``.rlimpact/bench-pipeline``, wiped per
round), registers and promotes the shipped model, and starts the ingestor and K instances of
the parser, featurizer and scorer (instance i: ``RLIMPACT_INSTANCE=i``, its own metrics
port). Once every consumer group holds all its partitions, ``--warmup`` other corpus replays
go through (a fresh broker's JVM spends its first minute compiling its hot paths; each
service's first calls load libraries and the model), then it times the offline pass over the
files (``cmd_score``, the ``rlimpact score`` code path, in this process: one core), then copies
the files into the watched folder and waits for the last score row: the pipeline's rate is
the replays scored divided by the time from the first copy to that row's ``created_at``.

It also prints, per stage, the median time a replay spent from the previous stage's status to
its own (``replay_status_history``: queueing included), the handler time per replay
(``rlimpact_processing_seconds``) and each process's CPU time during the round. Settings are
the defaults, unless set in the environment (e.g. ``RLIMPACT_PARSER_WORKERS``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from live import STACK, broker_pid, fresh_stack, samples, settings_of, start, stop

from services.cli import build_parser
from services.cli.offline import cmd_score
from shared.events import FEATURES_READY, FRAMES_PARSED, REPLAY_UPLOADED, Topic
from shared.settings import Settings

SCALED = {"parser": REPLAY_UPLOADED, "featurizer": FRAMES_PARSED, "scorer": FEATURES_READY}
STAGES = ("uploaded", "parsed", "featurized", "scored")


@dataclass
class Round:
    instances: int
    replays: int
    scored: int
    failed: int
    offline: Offline
    pipeline_per_s: float
    stage_ms: dict[str, float]  # median per replay, from the previous status to this one
    handler_ms: dict[str, float]  # mean handler time per event, per service
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds during the round
    idle_cpu: dict[str, float] = field(default_factory=dict)  # % of a core, idle stack

    @property
    def ratio(self) -> float:
        return self.pipeline_per_s / self.offline.per_s

    def cpu_ms_per_replay(self) -> tuple[float, float]:
        """Offline and pipeline (all its processes, Kafka and Postgres included)."""
        offline = 1e3 * self.offline.cpu_seconds / self.offline.scored
        return offline, 1e3 * sum(self.cpu.values()) / self.scored


def corpus_files(settings: Settings, n: int) -> list[Path]:
    """The first ``n`` corpus replays (by name) that subtr-actor also decodes: parseable ones."""
    with (settings.replays_dir / "MANIFEST.tsv").open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    files = sorted(
        settings.replays_dir / row["file"]
        for row in rows
        if row["file"].startswith("corpus/") and row["subtr_actor_1.5.1_ndarray"] == "ok"
    )
    if len(files) < n:
        raise SystemExit(f"bench: only {len(files)} usable corpus replays, asked for {n}")
    return files[:n]


@dataclass(frozen=True)
class Offline:
    seconds: float
    scored: int  # the others are rejected, as the pipeline rejects them
    cpu_seconds: float

    @property
    def per_s(self) -> float:
        return self.scored / self.seconds


def offline_rate(files: list[Path], settings: Settings) -> Offline:
    """``rlimpact score`` over ``files`` in this process: replays per second, CPU time."""
    out = io.StringIO()
    began, cpu_began = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        cmd_score(build_parser().parse_args(["score", *map(str, files)]), settings)
    seconds, cpu = time.perf_counter() - began, time.process_time() - cpu_began
    scored = len(files) - out.getvalue().count(": rejected: ")
    return Offline(seconds, scored, cpu)


def instance_env(env: dict[str, str], instance: int) -> dict[str, str]:
    """Instance i of a service (its own metrics port: ``Settings.metrics_port``)."""
    return {**env, "RLIMPACT_INSTANCE": str(instance)}


def instance_settings(env: dict[str, str], instance: int) -> Settings:
    return settings_of(instance_env(env, instance))


def assigned_partitions(env: dict[str, str], service: str, topic: Topic, instances: int) -> int:
    """Partitions of ``topic`` the instances of ``service`` hold between them (lag series)."""
    held = {
        sample.labels["partition"]
        for i in range(instances)
        for sample in samples(instance_settings(env, i), service)
        if sample.name == "rlimpact_consumer_lag" and sample.labels["topic"] == topic.name
    }
    return len(held)


def metric_total(env: dict[str, str], service: str, instances: int, name: str) -> float:
    return sum(
        sample.value
        for i in range(instances)
        for sample in samples(instance_settings(env, i), service)
        if sample.name == name
    )


async def wait_until_ready(env: dict[str, str], settings: Settings, instances: int) -> None:
    """Every consumer group holds all partitions of its topic; every scorer has the model.
    (The lag series appear once a partition was fetched from: the round's first poll.)"""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        groups_ready = all(
            assigned_partitions(env, service, topic, instances) == settings.partitions(topic)
            for service, topic in SCALED.items()
        )
        models = [
            sample.value
            for i in range(instances)
            for sample in samples(instance_settings(env, i), "scorer")
            if sample.name == "rlimpact_active_model_id"
        ]
        if groups_ready and len(models) == instances and all(models):
            return
        await asyncio.sleep(1)
    raise SystemExit("bench: the services did not get their partitions and model in 180 s")


COUNTS = """
SELECT count(DISTINCT s.replay_id) FILTER (WHERE s.replay_id IS NOT NULL) AS scored,
       count(DISTINCT r.id) FILTER (WHERE r.status = 'failed') AS failed
FROM replays r LEFT JOIN scores s ON s.replay_id = r.id
WHERE r.created_at >= to_timestamp($1)
"""


async def wait_for_scores(
    settings: Settings, n_files: int, since: float, timeout: float
) -> tuple[int, int]:
    """Until the ``n_files`` replays received since ``since`` are scored or failed."""
    conn = await asyncpg.connect(settings.pg_dsn)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            scored, failed = await conn.fetchrow(COUNTS, since)
            if scored + failed >= n_files:
                return scored, failed
            await asyncio.sleep(0.25)
        raise SystemExit(f"bench: {scored} scored, {failed} failed of {n_files} after {timeout} s")
    finally:
        await conn.close()


async def drop_and_wait(settings: Settings, files: list[Path], timeout: float) -> tuple[int, int]:
    """Copy ``files`` into the watched folder; (scored, failed) once all are done."""
    since = time.time()
    settings.inbox_dir.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copy(path, settings.inbox_dir / path.name)
    return await wait_for_scores(settings, len(files), since, timeout)


async def last_score_at(settings: Settings) -> float:
    conn = await asyncpg.connect(settings.pg_dsn)
    try:
        return (await conn.fetchval("SELECT max(created_at) FROM scores")).timestamp()
    finally:
        await conn.close()


STAGE_TIMES = """
WITH first_at AS (
    SELECT replay_id, status, min(at) AS at FROM replay_status_history GROUP BY replay_id, status
    UNION ALL
    SELECT replay_id, 'scored', max(created_at) FROM scores GROUP BY replay_id
    UNION ALL
    SELECT id, 'received', created_at FROM replays
)
SELECT replay_id, status, extract(epoch FROM at) AS at FROM first_at
"""


async def stage_medians(settings: Settings, since: float) -> dict[str, float]:
    """Per stage, the median ms of a scored replay (received since ``since``) from the
    previous status to this one."""
    conn = await asyncpg.connect(settings.pg_dsn)
    try:
        rows = await conn.fetch(STAGE_TIMES)
    finally:
        await conn.close()
    at: dict[str, dict[str, float]] = {}
    for row in rows:
        at.setdefault(row["replay_id"], {})[row["status"]] = float(row["at"])
    scored = [t for t in at.values() if "scored" in t and t.get("received", 0) >= since]
    medians = {}
    previous = "received"
    for stage in STAGES:
        medians[stage] = 1e3 * statistics.median(t[stage] - t[previous] for t in scored)
        previous = stage
    return medians


def handler_totals(env: dict[str, str], instances: int) -> dict[str, tuple[float, float]]:
    """Per service, seconds in handlers and events handled so far, over its instances."""
    return {
        service: tuple(
            metric_total(env, service, count, f"rlimpact_processing_seconds_{part}")
            for part in ("sum", "count")
        )
        for service, count in ((s, instances) for s in SCALED)
    }


def handler_means(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, float]:
    """Mean ms per event handled between the two totals."""
    means = {}
    for service, (seconds, events) in after.items():
        seconds, events = seconds - before[service][0], events - before[service][1]
        means[service] = 1e3 * seconds / events if events else float("nan")
    return means


async def run_round(
    args: argparse.Namespace, files: list[Path], warmup: list[Path], instances: int
) -> Round:
    env, settings, logs = fresh_stack("bench-pipeline", 900)
    data_dir = settings.data_dir
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        model = str(settings.default_model_dir / "impact.onnx")
        register = ("models", "register", model, "--promote")
        if start("services.cli", env, logs / "register.log", *register).wait(timeout=300):
            raise SystemExit(f"bench: model registration failed: see {logs}/register.log")
        processes["ingestor"] = start("services.ingestor", env, logs / "ingestor.log")
        for service in SCALED:
            for i in range(instances):
                name = f"{service}-{i}"
                log = logs / f"{name}.log"
                processes[name] = start(f"services.{service}", instance_env(env, i), log)
        await wait_until_ready(env, settings, instances)

        if warmup:  # the broker's JVM compiles its hot paths, each service's first calls
            await drop_and_wait(settings, warmup, args.timeout)
        pids = {name: p.pid for name, p in processes.items()} | server_pids(data_dir)
        cpu_idle = {name: tree_cpu_seconds(pid) for name, pid in pids.items()}
        offline = offline_rate(files, settings)
        cpu_before = {name: tree_cpu_seconds(pid) for name, pid in pids.items()}
        idle_share = {  # while the offline pass ran: what the stack costs doing nothing
            name: 100 * (cpu_before[name] - cpu_idle[name]) / offline.seconds for name in pids
        }
        handlers_before = handler_totals(env, instances)
        began = time.time()
        scored, failed = await drop_and_wait(settings, files, args.timeout)
        seconds = await last_score_at(settings) - began
        cpu = {name: tree_cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        if scored != offline.scored:
            print(f"bench: the pipeline scored {scored} replays, the offline pass {offline.scored}")
        return Round(
            instances=instances,
            replays=len(files),
            scored=scored,
            failed=failed,
            offline=offline,
            pipeline_per_s=scored / seconds,
            stage_ms=await stage_medians(settings, began),
            handler_ms=handler_means(handlers_before, handler_totals(env, instances)),
            cpu=cpu,
            idle_cpu=idle_share,
        )
    finally:
        for process in processes.values():
            stop(process)
        subprocess.run([*STACK, "stop"], env=env, check=False, stdout=subprocess.DEVNULL)


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its descendants so far, exited ones included once reaped (the
    parser's worker processes do the parsing)."""
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            stats[int(stat.parent.name)] = (int(fields[1]), sum(map(int, fields[11:15])))
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, (ppid, _) in stats.items() if ppid == parent]
        tree.update(children)
        frontier.extend(children)
    return sum(stats[p][1] for p in tree if p in stats) / os.sysconf("SC_CLK_TCK")


def server_pids(data_dir: Path) -> dict[str, int]:
    """The Kafka broker's and the Postgres postmaster's pids, as deploy/stack.sh recorded them."""
    postmaster = data_dir / "postgres" / "data" / "postmaster.pid"
    return {
        "kafka": broker_pid(data_dir),
        "postgres": int(postmaster.read_text().splitlines()[0]),
    }


def print_round(r: Round) -> None:
    print(
        f"{r.instances:>9}  {r.replays:>7}  {r.scored:>6}  {r.failed:>6}  "
        f"{r.offline.per_s:>9.2f}  {r.pipeline_per_s:>10.2f}  {r.ratio:>5.2f}x"
    )
    stages = ", ".join(f"{stage} {ms:.0f}" for stage, ms in r.stage_ms.items())
    print(f"           median ms from the previous status: {stages}")
    handlers = ", ".join(f"{service} {ms:.0f}" for service, ms in r.handler_ms.items())
    print(f"           handler ms per event: {handlers}")
    cpu = ", ".join(f"{name} {seconds:.1f}" for name, seconds in r.cpu.items())
    offline, pipeline = r.cpu_ms_per_replay()
    print(f"           CPU s during the round: {cpu}")
    idle = ", ".join(f"{name} {share:.1f}" for name, share in r.idle_cpu.items())
    print(f"           CPU of the idle stack (during the offline pass), % of a core: {idle}")
    print(f"           CPU ms per replay: offline {offline:.0f}, pipeline {pipeline:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replays", type=int, default=100, help="corpus files per round")
    parser.add_argument("--instances", type=int, nargs="+", default=[1, 2], help="per stage")
    parser.add_argument(
        "--warmup", type=int, default=20, help="other corpus replays through the stack first"
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds per pass")
    args = parser.parse_args()
    settings = Settings()
    usable = corpus_files(settings, args.replays + args.warmup)
    files, warmup = usable[: args.replays], usable[args.replays :]
    size = sum(path.stat().st_size for path in files) / 2**20
    print(
        f"replay path: {len(files)} corpus replays ({size:.0f} MB), {os.cpu_count()} CPUs, "
        f"parser workers {settings.parser_workers} per instance; each round on a fresh stack, "
        f"warmed by {len(warmup)} other replays; offline = `rlimpact score` in one process, "
        "timed just before the round's pipeline pass"
    )
    print("instances  replays  scored  failed  offline/s  pipeline/s  ratio")
    for instances in args.instances:
        print_round(asyncio.run(run_round(args, files, warmup, instances)))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
