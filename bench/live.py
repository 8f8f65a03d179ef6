"""Live path latency and throughput: N simulated matches at 30 Hz through bridge -> Kafka ->
live service -> scores.live, for each N in one run.

    .venv/bin/python bench/live.py [--matches 1 10 50] [--seconds 20] [--warmup 5]
                                   [--stack-warmup 60] [--stack-warmup-matches 10]
                                   [--load-niceness 10] [--live-instances 1]
                                   [--scoring model none]

Starts its own Kafka and Postgres (``deploy/stack.sh``, ports from
``RLIMPACT_BENCH_PORT_OFFSET``, default 800, data in ``.rlimpact/bench-live``) and the live
service (``--live-instances`` of it, sharing live.frames' partitions), and warms them with
``--stack-warmup`` seconds of unmeasured load (a freshly started broker spends its first
minute compiling its hot paths: without it the first round measures the JVM's warm-up, not
the live path); then for each N, ``rlimpact simulate --matches N
--loop`` (real time, matches spread over one frame interval) and a bridge following the N
feeds. The simulator stands in for the game, which runs on the players' machines: it runs at
``--load-niceness`` so that the load generator yields the CPU to the path it measures.
After ``--warmup`` seconds it reads ``scores.live`` for ``--seconds`` and prints, per N:

- offered: frames per second the feeds are to send (N x 30); received: messages per second
  the bridge received from them in the window (its ``rlimpact_events_in_total``: less than
  offered when the simulator, niced, does not get the CPU to keep up); sustained: frames per
  second that reached a ``scores.live`` update in the window;
- latency from the bridge's receipt of a frame to the emission of the ``scores.live`` update
  covering it, p50 and p99: both times travel in the update (``frames_received_at``,
  ``emitted_at``), so this script reads ``scores.live`` in batches (every 100 ms), adding
  little load of its own to the machine it measures;
- the CPU time each process used in the window, in % of one core (live service, broker,
  bridge, simulator, this script), and the time its threads spent runnable but waiting for
  a CPU (the kernel's schedstat run-queue delay, summed over threads, in % of the window):
  how much of the latency is the machine's cores being taken, not the work itself.

``--scoring none`` runs the same rounds with the live service's featurizing and model call
taken out (``bench/live_floor.py``; every other step of the path stays): the latency the rest
of the path costs on this machine, the floor under any faster scoring. ``--scoring model
none`` measures both, one after the other, in one run on one stack.

Target (the issue): p99 <= 20 ms at N = 10. Every process runs on this machine, the load
generator included.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaConsumer
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from services.cli.instances import Instance, instance_environment
from shared.events import LIVE_FRAMES, SCORES_LIVE, LiveScore, decode
from shared.settings import REPO_ROOT, Settings

RATE = 30.0


SCORING_MODULES = {"model": "services.live", "none": "bench.live_floor"}


@dataclass(frozen=True)
class Round:
    scoring: str
    matches: int
    offered: float
    received: float
    sustained: float
    emit_ms: tuple[float, float]
    n_latencies: int
    cpu: dict[str, float]  # % of one core over the measured window, per process
    waited: dict[str, float]  # % of the window its threads waited, runnable, for a CPU


def bench_env(offset: int, data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "RLIMPACT_DATA_DIR": str(data_dir),
        "RLIMPACT_KAFKA_PORT": str(19092 + offset),
        "RLIMPACT_KAFKA_CONTROLLER_PORT": str(19093 + offset),
        "RLIMPACT_KAFKA_BOOTSTRAP": f"127.0.0.1:{19092 + offset}",
        "RLIMPACT_PG_PORT": str(15433 + offset),
        "RLIMPACT_METRICS_BASE_PORT": str(19181 + offset),
        "RLIMPACT_LIVE_HTTP_PORT": str(19172 + offset),
        "RLIMPACT_KAFKA_LIB_DIR": os.environ.get(
            "RLIMPACT_KAFKA_LIB_DIR", str(REPO_ROOT / ".rlimpact" / "kafka-lib")
        ),
        "PYTHONUNBUFFERED": "1",
    }


def settings_of(env: dict[str, str]) -> Settings:
    return Settings.model_validate(
        {
            k.removeprefix("RLIMPACT_").lower(): v
            for k, v in env.items()
            if k.startswith("RLIMPACT_")
        }
    )


def start(
    module: str, env: dict[str, str], log: Path, *args: str, niceness: int = 0
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        preexec_fn=(lambda: os.nice(niceness)) if niceness else None,
        env=env,
        cwd=REPO_ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


def samples(settings: Settings, service: str, instance: int = 0) -> list[Sample]:
    """An instance's Prometheus samples (none while it does not answer)."""
    url = f"http://127.0.0.1:{settings.metrics_port(service, instance)}/metrics"
    try:
        body = urllib.request.urlopen(url, timeout=2).read().decode()
    except OSError:
        return []
    return [sample for family in text_string_to_metric_families(body) for sample in family.samples]


def live_ready(settings: Settings, instances: int) -> bool:
    """The live instances have all partitions of live.frames between them (each starts at
    their end)."""
    partitions = {
        sample.labels["partition"]
        for instance in range(instances)
        for sample in samples(settings, "live", instance)
        if sample.name == "rlimpact_consumer_lag" and sample.labels["topic"] == LIVE_FRAMES.name
    }
    return len(partitions) == settings.partitions(LIVE_FRAMES)


def bridge_received(settings: Settings) -> float:
    """Messages the bridge has received from the SOS feeds so far."""
    return sum(
        sample.value
        for sample in samples(settings, "bridge")
        if sample.name == "rlimpact_events_in_total" and sample.labels["topic"] == "feed:sos"
    )


async def measure(
    settings: Settings,
    env: dict[str, str],
    logs: Path,
    replay: Path,
    n: int,
    warmup: float,
    seconds: float,
    resident: dict[str, int],
    load_niceness: int,
    scoring: str = "model",
) -> Round:
    """One round; ``resident``: the processes that outlive it (name -> pid), whose CPU use is
    reported with the round's own."""
    consumer = AIOKafkaConsumer(
        SCORES_LIVE.name,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        auto_offset_reset="latest",
        fetch_min_bytes=1 << 20,
        fetch_max_wait_ms=100,
    )
    await consumer.start()
    await consumer.seek_to_end()
    port = 19160 + int(env["RLIMPACT_KAFKA_PORT"]) - 19092
    simulator = start(
        "services.cli",
        env,
        logs / f"simulate-{n}.log",
        *("simulate", str(replay), "--port", str(port), "--matches", str(n), "--loop"),
        *("--rate", str(RATE)),
        niceness=load_niceness,
    )
    urls = ",".join(f"ws://127.0.0.1:{port}/{k}" for k in range(n))
    bridge = start(
        "services.bridge", {**env, "RLIMPACT_BRIDGE_SOS_URLS": urls}, logs / f"bridge-{n}.log"
    )
    emit, frames = [], 0
    pids = {
        **resident,
        "bridge": bridge.pid,
        "simulator": simulator.pid,
        "this script": os.getpid(),
    }
    try:
        began = time.monotonic()
        window_start = window_end = None
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=2000)
            arrived = datetime.now(UTC)
            elapsed = time.monotonic() - began
            if window_start is None and elapsed >= warmup and frames_seen(batches):
                window_start = arrived
                cpu_start = {name: cpu_seconds(pid) for name, pid in pids.items()}
                wait_start = {name: run_queue_seconds(pid) for name, pid in pids.items()}
                received_start = bridge_received(settings)
            if window_start is not None and elapsed >= warmup + seconds:
                window_end = arrived
                cpu_end = {name: cpu_seconds(pid) for name, pid in pids.items()}
                wait_end = {name: run_queue_seconds(pid) for name, pid in pids.items()}
                received = bridge_received(settings) - received_start
                break
            if elapsed > warmup + seconds + 120:
                raise SystemExit(f"bench: no scores.live for {n} matches: see {logs}")
            if window_start is None:
                continue
            for records in batches.values():
                for record in records:
                    score = decode(LiveScore, record.value)
                    frames += len(score.frames_received_at)
                    for received_at in score.frames_received_at:
                        emit.append((score.emitted_at - received_at).total_seconds() * 1e3)
    finally:
        stop(bridge)
        stop(simulator)
        await consumer.stop()
    seconds = (window_end - window_start).total_seconds()
    return Round(
        scoring=scoring,
        matches=n,
        offered=n * RATE,
        received=received / seconds,
        sustained=frames / seconds,
        emit_ms=(float(np.percentile(emit, 50)), float(np.percentile(emit, 99))),
        n_latencies=len(emit),
        cpu={name: 100 * (cpu_end[name] - cpu_start[name]) / seconds for name in pids},
        waited={name: 100 * (wait_end[name] - wait_start[name]) / seconds for name in pids},
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_queue_seconds(pid: int) -> float:
    """Time the threads of a process have spent runnable but waiting for a CPU, summed
    (``/proc/PID/task/*/schedstat``, second field, ns; 0 where the kernel keeps no
    schedstats). A thread that ended before the reading is not counted."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def frames_seen(batches) -> bool:
    return any(batches.values())


STACK = ["bash", str(REPO_ROOT / "deploy" / "stack.sh")]


def fresh_stack(name: str, default_offset: int) -> tuple[dict[str, str], Settings, Path]:
    """A bench's own Kafka and Postgres on an empty data dir, ``.rlimpact/<name>`` (ports from
    ``RLIMPACT_BENCH_PORT_OFFSET``, else ``default_offset``): its env, settings and log dir."""
    offset = int(os.environ.get("RLIMPACT_BENCH_PORT_OFFSET", str(default_offset)))
    data_dir = REPO_ROOT / ".rlimpact" / name
    env = bench_env(offset, data_dir)
    subprocess.run([*STACK, "stop"], env=env, check=False, capture_output=True)
    shutil.rmtree(data_dir, ignore_errors=True)
    logs = data_dir / "logs"
    logs.mkdir(parents=True)
    subprocess.run([*STACK, "start"], env=env, check=True, stdout=subprocess.DEVNULL)
    return env, settings_of(env), logs


async def run(args) -> list[Round]:
    env, settings, logs = fresh_stack("bench-live", 800)
    try:
        rounds = []
        for scoring in args.scoring:
            rounds += await run_scoring(args, scoring, env, settings, logs)
        return rounds
    finally:
        subprocess.run([*STACK, "stop"], env=env, check=False, stdout=subprocess.DEVNULL)


async def run_scoring(
    args, scoring: str, env: dict[str, str], settings: Settings, logs: Path
) -> list[Round]:
    """The rounds of every N with the live service of ``scoring`` (started, warmed, stopped)."""
    lives = [start_live(env, settings, logs, k, scoring) for k in range(args.live_instances)]
    try:
        deadline = time.monotonic() + 120
        while not live_ready(settings, len(lives)):
            if time.monotonic() > deadline or any(live.poll() is not None for live in lives):
                raise SystemExit(f"bench: the live service did not start: see {logs}/live*.log")
            await asyncio.sleep(0.5)
        resident = {f"live service {k}": live.pid for k, live in enumerate(lives)}
        resident["broker"] = broker_pid(settings.data_dir)
        game = (settings, env, logs, args.replay)
        niceness = args.load_niceness
        if args.stack_warmup > 0:
            n = args.stack_warmup_matches
            await measure(*game, n, args.stack_warmup, 1.0, resident, niceness, scoring)
        rounds = []
        for n in args.matches:
            rounds.append(
                await measure(*game, n, args.warmup, args.seconds, resident, niceness, scoring)
            )
            print_round(rounds[-1])
        return rounds
    finally:
        for live in lives:
            stop(live)


def start_live(
    env: dict[str, str], settings: Settings, logs: Path, instance: int, scoring: str = "model"
) -> subprocess.Popen[bytes]:
    """Instance ``instance`` of the live service (``scoring`` none: without its scoring), with
    its own ports, as the supervisor gives them."""
    own = instance_environment(settings, Instance("live", instance))
    name = ("live" if instance == 0 else f"live-{instance}") + (
        "" if scoring == "model" else "-" + scoring
    )
    return start(SCORING_MODULES[scoring], {**env, **own}, logs / f"{name}.log")


def broker_pid(data_dir: Path) -> int:
    """The pid ``deploy/kafka.sh`` recorded for the bench's broker."""
    return int((data_dir / "kafka" / "kafka.pid").read_text().strip())


def print_round(r: Round) -> None:
    cpu = ", ".join(f"{name} {share:.0f}" for name, share in r.cpu.items())
    waited = ", ".join(f"{name} {share:.0f}" for name, share in r.waited.items())
    print(
        f"{r.scoring:>7}  {r.matches:>7}  {r.offered:>9.0f}  {r.received:>10.0f}  "
        f"{r.sustained:>11.0f}  "
        f"{r.emit_ms[0]:>7.1f}  {r.emit_ms[1]:>7.1f}  {r.n_latencies:>7}\n"
        f"                  CPU, % of one core: {cpu}\n"
        f"                  waiting for a CPU, % of the window: {waited}",
        flush=True,
    )


def main() -> None:
    default_replay = Settings().replays_dir / "corpus" / "boxcars-00bb.replay"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matches", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured per N")
    parser.add_argument("--warmup", type=float, default=5.0, help="per N, before measuring")
    parser.add_argument(
        "--stack-warmup",
        type=float,
        default=60.0,
        help="seconds of unmeasured load first: the broker's JVM compiles its hot paths in "
        "its first minute, which a long-running broker has long done",
    )
    parser.add_argument(
        "--stack-warmup-matches",
        type=int,
        default=10,
        help="matches played during --stack-warmup",
    )
    parser.add_argument(
        "--load-niceness",
        type=int,
        default=10,
        help="the simulator's niceness: it stands in for the game, which runs on the players' "
        "machines, not on the scoring host (0: compete for the CPU as an equal)",
    )
    parser.add_argument(
        "--live-instances",
        type=int,
        default=1,
        help="live service instances sharing live.frames' partitions (a consumer group)",
    )
    parser.add_argument(
        "--scoring",
        nargs="+",
        choices=sorted(SCORING_MODULES),
        default=["model"],
        help="the live service as it is (model), or without its featurizing and model call "
        "(none: the floor of the rest of the path); several: one after the other",
    )
    parser.add_argument("--replay", type=Path, default=default_replay)
    args = parser.parse_args()
    if not args.replay.exists():
        raise SystemExit(f"bench: no replay at {args.replay} (set RLIMPACT_REPLAYS_DIR)")
    print(f"live path, {RATE:g} Hz per match, {os.cpu_count()} CPUs, replay {args.replay.name}")
    if args.stack_warmup > 0:
        n = args.stack_warmup_matches
        print(f"first {args.stack_warmup:g} s of {n} matches to warm the stack, not measured")
    print(f"the simulator (the game) runs at niceness {args.load_niceness}")
    print(f"{args.live_instances} live service instance(s)")
    print("                                                      latency (ms)")
    print("scoring  matches  offered/s  received/s  sustained/s      p50      p99   frames")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
