"""The live service's per-match state in Kafka, two ways side by side in one run: the
service's own ``StateLog`` (``services/live/changelog.py``: whole-state snapshots every
``RLIMPACT_LIVE_SNAPSHOT_SECONDS`` to a compacted topic, offsets committed only up to what
acknowledged snapshots hold) against a faust-streaming ``Table`` backed by its changelog.

    PYTHONPATH=. .venv/bin/python bench/live_state_faust.py [--matches 10]
        [--warmup-seconds 15] [--seconds 10] [--frames-per-batch 3] [--rounds 2]

(faust-streaming is in the ``dev`` extra.) Starts its own Kafka (``deploy/kafka.sh``, ports
from ``RLIMPACT_BENCH_PORT_OFFSET``, default 1000, data in ``.rlimpact/bench-live-state-faust``:
the broker's removed at the end, the logs kept) and writes N matches' SOS feeds to
``live.frames`` (one partition), frames interleaved: one corpus replay through the bridge's
mapping, as ``bench/live_state.py`` does. Then, per round and variant, a process of its own
reads them all from the start, ``--frames-per-batch`` frames of every match per batch, and
scores them with ``LiveScorer``:

- ``no state``: scoring alone (the reference for the CPU the state adds);
- ``StateLog``: as the live service keeps its state (a consumer group with the service's 6 s
  session, partitions restored on assignment, ``save_due`` after each batch, ``commit_soon``
  every 0.5 s), on a game-time clock (frames read / N / 30 Hz), so snapshots come every 2 s
  of play as they would live;
- ``faust, each batch``: a faust ``App`` (memory store, the same 6 s session), an agent over
  ``live.frames`` taking batches (``take_events``), and each match's ``MatchState`` a value of
  a ``Table`` set after every batch that changed it; the table's codec is
  ``services/live/snapshot.py``'s, and its changelog topic has ``live.state``'s configuration.
  This is how faust keeps state consistent with its input: a table that lags its committed
  offsets loses frames after a crash;
- ``faust, every 2 s``: the same, each match's value set every 2 s of play only (what the
  snapshots do), to separate faust's own cost from the changelog's volume; its committed
  offsets may run ahead of its table, so a crash can lose frames (``behind`` says how many).

Per variant it prints the CPU time per frame over the last ``--seconds`` of play (this
process's CPU, ``time.process_time``, including its Kafka clients, until every write is
acknowledged), the bytes of state written per second of play (values serialized for the state
topic), and, after a ``kill -9`` of that process, the recovery: a new process's time from
spawn to every match's state back at its last frame (state read back, then the frames read
again since the committed offset scored), and the restore step alone (reading the state topic:
``StateLog.take``, or faust's table recovery). Variants alternate within each round; medians
over the rounds, ratios against ``StateLog``. Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from live import bench_env, settings_of
from live_state import RATE, feed
from live_state_variants import (
    BASE,
    CHILD_SECONDS,
    KAFKA,
    RESULT,
    VARIANTS,
    Job,
    create_topic,
    run_faust,
    run_statelog,
)

from shared.events import LIVE_FRAMES, LiveFrame, encode
from shared.settings import REPO_ROOT, Settings

# ---------------------------------------------------------------- the run


def child(argv: list[str]) -> None:
    job = Job(**json.loads(argv[0]))
    signal.alarm(CHILD_SECONDS + 60)  # bounded, whatever happens
    if job.variant.startswith("faust"):
        run_faust(job)
    else:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        asyncio.run(run_statelog(job))


def spawn(job: Job, logs: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], dict]:
    """A child for ``job``; its result line (waited for at most CHILD_SECONDS)."""
    log = logs / f"{job.run}-{job.phase}.log"
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", json.dumps(dataclasses.asdict(job))],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + CHILD_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        ready, _, _ = select.select([process.stdout], [], [], 1.0)
        if ready and (line := process.stdout.readline()).startswith(RESULT):
            return process, json.loads(line.removeprefix(RESULT))
    kill(process)
    raise SystemExit(f"bench: {job.variant} {job.phase} gave no result: see {log}")


def kill(process: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def play_and_restore(job: Job, logs: Path, env: dict[str, str]) -> dict[str, Any]:
    process, played = spawn(job, logs, env)
    kill(process)  # kill -9 once its state is written: what a restart finds
    if job.variant == "no state":
        return played
    restore = dataclasses.replace(job, phase="restore", spawned_at=time.time())
    process, restored = spawn(restore, logs, env)
    kill(process)
    return played | restored


async def write_frames(settings: Settings, frames: list[LiveFrame], n: int) -> dict[str, int]:
    """N matches' frames, interleaved, on ``live.frames`` (1 partition): each match's last
    offset."""
    await create_topic(settings, LIVE_FRAMES.name)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=20)
    await producer.start()
    last: dict[str, int] = {}
    try:
        for frame in frames:
            for k in range(n):
                match_id = f"m{k}"
                value = encode(frame.model_copy(update={"match_id": match_id}))
                ack = await producer.send(LIVE_FRAMES.name, value, key=match_id.encode())
                last[match_id] = ack
        await producer.flush()
        return {m: (await ack).offset for m, ack in last.items()}
    finally:
        await producer.stop()


def median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if key in r]
    return statistics.median(values) if values else None


def print_table(results: dict[str, list[dict[str, Any]]]) -> None:
    columns: list[tuple[str, str, Callable[[float], str]]] = [
        ("cpu_us_per_frame", "CPU us/frame", "{:.0f}".format),
        ("state_bytes_per_s", "state kB/s", lambda v: f"{v / 1e3:.0f}"),
        ("state_records_per_s", "records/s", "{:.0f}".format),
        ("restore_s", "restore s", "{:.2f}".format),
        ("ready_s", "spawn->caught up s", "{:.1f}".format),
    ]
    print(f"{'variant':<19}" + "".join(f"{title:>26}" for _, title, _ in columns) + "  behind")
    for variant, rows in results.items():
        cells = []
        for key, _, fmt in columns:
            value, base = median(rows, key), median(results[BASE], key)
            ratio = f" ({value / base:.2f}x)" if value is not None and base else ""
            cells.append(f"{fmt(value) + ratio:>26}" if value is not None else f"{'-':>26}")
        lag = ",".join(str(r["behind"]) for r in rows if "behind" in r) or "-"
        print(f"{variant:<19}" + "".join(cells) + f"  {lag}")
    print("rounds (CPU us/frame):")
    for variant, rows in results.items():
        print(f"  {variant:<19} " + " ".join(f"{r['cpu_us_per_frame']:.0f}" for r in rows))


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    default_replay = Settings().replays_dir / "corpus" / "boxcars-00bb.replay"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matches", type=int, default=10)
    parser.add_argument("--warmup-seconds", type=float, default=15.0, help="of play, untimed")
    parser.add_argument("--seconds", type=float, default=10.0, help="of play, timed")
    parser.add_argument("--frames-per-batch", type=int, default=3, help="of each match")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--replay", type=Path, default=default_replay)
    args = parser.parse_args()
    if any(v.startswith("faust") for v in args.variants) and not importlib.util.find_spec("faust"):
        raise SystemExit("bench: faust-streaming is not installed (the dev extra)")
    warm, timed = int(args.warmup_seconds * RATE), int(args.seconds * RATE)
    frames = feed(args.replay, (warm + timed) / RATE + 1)[: warm + timed]
    if len(frames) < warm + timed:
        raise SystemExit(f"bench: {args.replay.name} has only {len(frames)} frames of play")
    offset = int(os.environ.get("RLIMPACT_BENCH_PORT_OFFSET", "1000"))
    data_dir = REPO_ROOT / ".rlimpact" / "bench-live-state-faust"
    env = bench_env(offset, data_dir)
    subprocess.run([*KAFKA, "stop"], env=env, check=False, capture_output=True)
    shutil.rmtree(data_dir, ignore_errors=True)
    logs = data_dir / "logs"
    logs.mkdir(parents=True)
    print(
        f"{args.matches} matches, {args.frames_per_batch} frames of each per batch, "
        f"{args.warmup_seconds:g} s of play untimed then {args.seconds:g} s timed, "
        f"{args.rounds} rounds; load average at start {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    try:
        subprocess.run([*KAFKA, "start"], env=env, check=True, stdout=subprocess.DEVNULL)
        expected = asyncio.run(write_frames(settings_of(env), frames, args.matches))
        results: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
        for r in range(args.rounds):
            for i, variant in enumerate(args.variants):
                job = Job(
                    "play",
                    variant,
                    f"r{r}v{i}",
                    args.matches,
                    args.matches * args.frames_per_batch,
                    args.matches * warm,
                    expected,
                    0.0,
                )
                results[variant].append(play_and_restore(job, logs, env))
                print(f"round {r + 1} {variant}: {results[variant][-1]}", flush=True)
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
        print_table(results)
    finally:
        subprocess.run([*KAFKA, "stop"], env=env, check=False, stdout=subprocess.DEVNULL)
        shutil.rmtree(data_dir / "kafka" / "data", ignore_errors=True)  # the logs stay


if __name__ == "__main__":
    main()
