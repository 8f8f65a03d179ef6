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
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from live import bench_env, settings_of
from live_state import RATE, feed

from services.live import changelog, snapshot
from services.live.changelog import MAX_SNAPSHOT_BYTES, StateLog
from services.live.scorer import LiveScorer
from services.live.state import MatchState, ScoringModel
from shared.events import LIVE_FRAMES, LIVE_STATE, LiveFrame, decode, encode
from shared.kafka import COMPACTED_CONFIGS
from shared.model import ImpactModel
from shared.settings import REPO_ROOT, Settings

VARIANTS = ("no state", "StateLog", "faust, each batch", "faust, every 2 s")
BASE = "StateLog"
SESSION_TIMEOUT_S = 6.0  # the live service's (services/live/service.py)
COMMIT_INTERVAL_S = 0.5
CHILD_SECONDS = 180  # a child process ends itself (SIGALRM) after this, whatever happens
CATCH_UP_SECONDS = 30.0  # a restored process gives up waiting for the last frames after this
RESULT = "RESULT "
FAUST_LOG_LEVEL = "INFO"  # its recovery's progress, in the child's log
KAFKA = ["bash", str(REPO_ROOT / "deploy" / "kafka.sh")]


@dataclasses.dataclass(frozen=True)
class Job:
    """What a child process does (its command line)."""

    phase: str  # play | restore
    variant: str
    run: str
    matches: int
    batch: int
    warm: int  # records read before the timed part
    expected: dict[str, int]  # match id -> offset of its last frame
    spawned_at: float

    @property
    def total(self) -> int:
        return max(self.expected.values()) + 1


class Meter:
    """CPU, state bytes and records over the timed part of a play."""

    def __init__(self, job: Job) -> None:
        self.job, self.read, self.bytes, self.records = job, 0, 0, 0
        self.cpu_from: float | None = None
        self.bytes_from = self.records_from = 0

    def wrote(self, raw: bytes) -> bytes:
        self.bytes, self.records = self.bytes + len(raw), self.records + 1
        return raw

    def count(self, n: int) -> None:
        self.read += n
        if self.cpu_from is None and self.read >= self.job.warm:
            self.cpu_from = time.process_time()
            self.bytes_from, self.records_from = self.bytes, self.records

    @property
    def clock(self) -> float:
        """Seconds of play read so far."""
        return self.read / self.job.matches / RATE

    def result(self) -> dict[str, Any]:
        assert self.cpu_from is not None
        timed = self.read - self.job.warm
        seconds = timed / self.job.matches / RATE
        return {
            "cpu_us_per_frame": (time.process_time() - self.cpu_from) / timed * 1e6,
            "state_bytes_per_s": (self.bytes - self.bytes_from) / seconds,
            "state_records_per_s": (self.records - self.records_from) / seconds,
        }


def report(**fields: Any) -> None:
    print(RESULT + json.dumps(fields), flush=True)


def scoring_model() -> ScoringModel:
    impact = ImpactModel(REPO_ROOT / "models" / "default" / "impact.onnx")
    return ScoringModel(impact, None, impact.version)


def score_batch(
    scorer: LiveScorer, model: ScoringModel, clock: float, records: list[tuple[bytes, int, int]]
) -> None:
    """Records (value, partition, offset) decoded and scored, as the live service does."""
    frames = [decode(LiveFrame, value) for value, _, _ in records]
    scorer.score(frames, model, clock, [(p, o) for _, p, o in records])


def key_of(event: Any) -> str:
    key = event.key
    return key.decode() if isinstance(key, bytes) else str(key)


def behind(job: Job, matches: dict[str, MatchState]) -> int:
    """Frames of the input that the states do not reflect (all matches)."""
    return sum(
        (last - matches[m].offset) if m in matches else last + 1 for m, last in job.expected.items()
    ) // max(1, job.matches)


# ---------------------------------------------------------------- StateLog (and no state)


class _Assignments(ConsumerRebalanceListener):  # type: ignore[misc]
    """As the live service's listener: save before a revoke, restore on an assignment."""

    def __init__(self, log: StateLog, consumer: AIOKafkaConsumer, lock: asyncio.Lock) -> None:
        self.log, self.consumer, self.lock = log, consumer, lock
        self.restored: list[float] = []  # seconds each restore took

    async def on_partitions_revoked(self, revoked: Any) -> None:
        async with self.lock:
            await self.log.release(self.consumer, {tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: Any) -> None:
        async with self.lock:
            started = time.monotonic()
            await self.log.take({tp.partition for tp in assigned})
            self.restored.append(time.monotonic() - started)


async def run_statelog(job: Job) -> None:
    settings, model, meter = Settings(), scoring_model(), Meter(job)
    keep_state = job.variant == "StateLog"
    changelog.LIVE_STATE = dataclasses.replace(LIVE_STATE, name=f"live.state.{job.run}")
    if job.phase == "play":
        await create_topic(settings, changelog.LIVE_STATE.name, COMPACTED_CONFIGS)
    counted = snapshot.encode
    snapshot.encode = lambda state: meter.wrote(counted(state))  # what StateLog sends
    scorer = LiveScorer()
    log = StateLog(settings, scorer, "bench")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"bench-{job.run}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
        session_timeout_ms=int(SESSION_TIMEOUT_S * 1000),
        heartbeat_interval_ms=1000,
    )
    lock = asyncio.Lock()  # a batch and a rebalance do not interleave (as in the service)
    listener = _Assignments(log, consumer, lock)
    restored = listener.restored
    await log.start()
    await consumer.start()
    consumer.subscribe([LIVE_FRAMES.name], listener=listener)
    commit_due, deadline = 0.0, time.monotonic() + CHILD_SECONDS
    while time.monotonic() < deadline:
        batches = await consumer.getmany(timeout_ms=200, max_records=job.batch)
        async with lock:
            await _handle(job, log, scorer, model, meter, batches)
        if keep_state and meter.clock >= commit_due:
            log.commit_soon(consumer)
            commit_due = meter.clock + COMMIT_INTERVAL_S
        if job.phase == "play" and meter.read >= job.total:
            await asyncio.gather(*(s.ack for p in log.saving.values() for s in p))
            report(**meter.result())
            break
        if job.phase == "restore" and restored and await _restored(job, scorer, restored):
            break
    await asyncio.sleep(CHILD_SECONDS)  # until killed


async def _handle(
    job: Job,
    log: StateLog,
    scorer: LiveScorer,
    model: ScoringModel,
    meter: Meter,
    batches: dict[Any, list[Any]],
) -> None:
    """As ``LiveLoop.handle``: the records of partitions still owned, scored; snapshots due."""
    records = [
        (r.value, r.partition, r.offset)
        for rs in batches.values()
        for r in rs
        if r.partition in log.owned
    ]
    for _, partition, offset in records:
        log.read(partition, offset)
    if records:
        score_batch(scorer, model, meter.clock, records)
        meter.count(len(records))
    if job.variant == "StateLog":
        await log.save_due(meter.clock)


async def _restored(job: Job, scorer: LiveScorer, restored: list[float]) -> bool:
    """Every match back at its last frame, or given up waiting: reported."""
    lag = behind(job, scorer.matches)
    waited = time.time() - job.spawned_at
    if lag and waited < CATCH_UP_SECONDS + SESSION_TIMEOUT_S:
        return False
    report(ready_s=waited, restore_s=restored[0], behind=lag, matches=len(scorer.matches))
    return True


# ---------------------------------------------------------------- faust


class StateValue:
    """A table value's type, as faust reads it: its serializer from ``_options`` (the codec
    ``run_faust`` registers), and ``from_data`` the value that codec decoded."""

    _options = types.SimpleNamespace(serializer="live_state")

    @classmethod
    def from_data(cls, data: Any, preferred_type: Any = None) -> Any:
        return data


def run_faust(job: Job) -> None:
    import faust
    from faust.serializers import codecs

    settings, model, meter = Settings(), scoring_model(), Meter(job)

    class StateCodec(codecs.Codec):
        """A table value as ``live.state`` holds it (snapshot.py), counted."""

        def _dumps(self, obj: Any) -> bytes:
            return meter.wrote(snapshot.encode(obj))

        def _loads(self, s: bytes) -> Any:
            return snapshot.decode(s).state

    codecs.register("live_state", StateCodec())
    datadir = settings.data_dir / "faust" / job.run
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        f"bench-{job.run}",
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        web_enabled=False,
        datadir=str(datadir),
        topic_partitions=1,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=SESSION_TIMEOUT_S,
        broker_heartbeat_interval=1.0,
        producer_max_request_size=MAX_SNAPSHOT_BYTES,
        producer_acks=-1,
    )
    frames = app.topic(LIVE_FRAMES.name, key_serializer="raw", value_serializer="raw")
    table = app.Table(
        "live-state",
        default=None,
        partitions=1,
        key_type=str,
        value_type=StateValue,
        extra_topic_configs=COMPACTED_CONFIGS,
        # a batch of take_events() has no current event, whose partition a table write
        # takes by default: the key's partition instead (the bridge's partitioner, murmur2)
        use_partitioner=True,
    )
    scorer, every = LiveScorer(), job.variant == "faust, each batch"

    @app.agent(frames)
    async def live(stream: Any) -> None:
        async for events in stream.take_events(job.batch, within=0.2):
            if not scorer.matches:  # restored: the table's states go on
                scorer.matches.update(table.items())
            records = [(e.value, e.message.partition, e.message.offset) for e in events]
            score_batch(scorer, model, meter.clock, records)
            meter.count(len(records))
            for match_id in {key_of(e) for e in events}:
                state = scorer.matches.get(match_id)
                if state is not None and (every or meter.clock >= state.snapshot_due):
                    table[match_id] = state
                    state.snapshot_due = meter.clock + settings.live_snapshot_seconds
            if job.phase == "play" and meter.read >= job.total:
                await app.producer.flush()
                report(**meter.result())

    @app.task
    async def watch() -> None:
        """In a restored process: how long faust's table recovery took, and the catch-up."""
        if job.phase != "restore":
            return
        recovery = app.tables.recovery
        for _ in range(int((CATCH_UP_SECONDS + CHILD_SECONDS) / 0.01)):
            await asyncio.sleep(0.01)
            ended = recovery._recovery_ended_at  # faust's own marks (monotonic)
            if ended is None or recovery.in_recovery:
                continue
            if not scorer.matches:
                scorer.matches.update(table.items())
            lag = behind(job, scorer.matches)
            waited = time.time() - job.spawned_at
            if not lag or waited > CATCH_UP_SECONDS + SESSION_TIMEOUT_S:
                restore = ended - (recovery._recovery_started_at or ended)
                report(ready_s=waited, restore_s=restore, behind=lag, matches=len(table))
                return

    worker = faust.Worker(app, loglevel=FAUST_LOG_LEVEL, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


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


async def create_topic(
    settings: Settings, name: str, configs: dict[str, str] | None = None
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1, topic_configs=configs or {})])
    finally:
        await admin.close()


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
