"""The processes that `bench/live_state_faust.py` measures: one per variant, each reading
``live.frames`` and keeping its matches' state its own way (``StateLog`` or a faust
``Table``), reporting what it measured on one line of stdout (``RESULT``)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import types
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from live_state import RATE

from services.live import changelog, snapshot
from services.live.changelog import MAX_SNAPSHOT_BYTES, StateLog
from services.live.scorer import LiveScorer
from services.live.state import MatchState, ScoringModel
from shared.events import LIVE_FRAMES, LIVE_STATE, LiveFrame, decode
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


async def create_topic(
    settings: Settings, name: str, configs: dict[str, str] | None = None
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1, topic_configs=configs or {})])
    finally:
        await admin.close()
