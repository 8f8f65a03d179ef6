"""The chaos scenarios, for ``tests/chaos/test_chaos.py`` and ``bench/chaos.py`` alike.

Each scenario sends its own 50 replays into a running stack (copied into the watched folder,
10 a second) and, while they are in flight, does one thing to the stack: stops Postgres or
Kafka for 20 s (``deploy/postgres.sh``, ``deploy/kafka.sh``; always started again), or
``kill -9``s a service by the pid in its supervisor's pid file once a few replays are past its
stage, or kills the scorer again and again right after it emits. Nothing restarts a service
but the supervisor. Then it waits, bounded, until every replay of the batch is final, and
checks, for that batch alone:

- every parseable replay is ``scored``, with one ``scores`` row and one *committed*
  ``scores.emitted`` event (read from the start of the topic with a ``read_committed``
  consumer) per player and impact model; a replay missing one is *lost*, one with an event
  twice is *doubled*;
- every unparseable replay is ``failed`` with the reason the parser gives it offline;
- none is *stranded* (neither ``scored`` nor ``failed``);
- every service runs (a live process in its pid file) and its ``/metrics`` says it is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.events import SCORES_EMITTED, ScoreEmitted, decode
from tests.chaos.replays import Replay
from tests.chaos.stack import ChaosStack, instance_label
from tests.integration.conftest import wait_for

FEED_PER_SECOND = 10.0
MID_STREAM = 5  # replays past a service's stage before it is hit
OUTAGE_SECONDS = 20.0
EMIT_KILLS = 5
TRIGGER_SECONDS = 120.0  # for a fault's moment to come
RESTART_SECONDS = 90.0  # for the supervisor to start a killed service again
DRAIN_SECONDS = 180.0  # after the fault, for every replay to be final
STALL_SECONDS = 60.0  # ... or until nothing changed for this long
SERVICES_UP_SECONDS = 60.0
PG_RETRY_SECONDS = 60.0
KAFKA_READ_SECONDS = 60.0

FINAL = ("scored", "failed")
PARSED_OR_LATER = ("parsed", "featurized", "scored")
FEATURIZED_OR_LATER = ("featurized", "scored")
PG_DOWN = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
)


class FaultNotInjected(Exception):
    """The moment for the fault never came (say, nothing was ever scored), or what it was to
    hit was not running."""


class Probe:
    """One connection to the stack's Postgres that survives Postgres being restarted."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: asyncpg.Connection | None = None

    async def fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        deadline = time.monotonic() + PG_RETRY_SECONDS
        while True:
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await asyncpg.connect(self.dsn, timeout=5)
                return await self._conn.fetch(sql, *args, timeout=30)
            except PG_DOWN:
                await self.close()
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(*PG_DOWN):
                await self._conn.close(timeout=5)
            self._conn = None


@dataclass
class Run:
    """One scenario's batch in the stack, and what the fault may ask about its progress."""

    stack: ChaosStack
    probe: Probe
    batch: list[Replay]
    kills: int = 0  # kill -9s done by the fault

    @property
    def ids(self) -> list[str]:
        return [replay.sha256 for replay in self.batch]

    async def statuses(self) -> dict[str, str]:
        rows = await self.probe.fetch("SELECT id, status FROM replays WHERE id = ANY($1)", self.ids)
        return {row["id"]: row["status"] for row in rows}

    async def count(self, statuses: Iterable[str] | None = None) -> int:
        """Replays of the batch recorded (in one of ``statuses``, when given)."""
        found = (await self.statuses()).values()
        return sum(1 for s in found if statuses is None or s in statuses)

    async def scored(self) -> int:
        """Replays of the batch with at least one score row."""
        rows = await self.probe.fetch(
            "SELECT count(DISTINCT replay_id) AS n FROM scores WHERE replay_id = ANY($1)", self.ids
        )
        return rows[0]["n"]

    async def wait_until(self, progress: Callable[[Run], Awaitable[int]], what: str) -> None:
        async def reached() -> bool:
            return await progress(self) >= MID_STREAM

        try:
            await wait_for(reached, TRIGGER_SECONDS, what, interval=0.2)
        except AssertionError as error:
            raise FaultNotInjected(str(error)) from None


Fault = Callable[[Run], Awaitable[str]]  # does it, and says what it did


@dataclass(frozen=True)
class Scenario:
    name: str
    fault: Fault


# ---------------------------------------------------------------- the faults


async def ingested(run: Run) -> int:
    return await run.count()


async def parsed(run: Run) -> int:
    return await run.count(PARSED_OR_LATER)


async def featurized(run: Run) -> int:
    return await run.count(FEATURIZED_OR_LATER)


async def scored(run: Run) -> int:
    return await run.scored()


def outage(server: str, seconds: float = OUTAGE_SECONDS) -> Fault:
    """``deploy/<server>.sh stop`` once a few replays are parsed, and ``start`` after
    ``seconds`` (whatever happens meanwhile)."""

    async def fault(run: Run) -> str:
        await run.wait_until(parsed, f"{MID_STREAM} replays parsed")
        await asyncio.to_thread(run.stack.deploy, server, "stop")
        try:
            await asyncio.sleep(seconds)
        finally:
            await asyncio.to_thread(run.stack.deploy, server, "start")
        return f"{server} stopped for {seconds:g} s"

    return fault


def kill_mid_stream(service: str, progress: Callable[[Run], Awaitable[int]], past: str) -> Fault:
    """``kill -9`` the service once ``progress`` counts a few replays past its stage."""

    async def fault(run: Run) -> str:
        await run.wait_until(progress, f"{MID_STREAM} replays {past}")
        return await kill_and_wait(run, service)

    return fault


async def kill_and_wait(run: Run, service: str, instance: int = 0) -> str:
    """``kill -9`` an instance of the service; wait for the supervisor to start it again."""
    stack, name = run.stack, instance_label(service, instance)
    pid = stack.kill9(service, instance)
    if pid is None:
        raise FaultNotInjected(f"{name} was not running")
    run.kills += 1
    killed = time.monotonic()

    async def restarted() -> int | None:
        new = stack.pid(service, instance)
        return new if new not in (None, pid) else None

    try:
        new = await wait_for(restarted, RESTART_SECONDS, f"{name} to be restarted", 0.1)
    except AssertionError:
        return f"kill -9 {name} (pid {pid}): not restarted within {RESTART_SECONDS:g} s"
    return f"kill -9 {name} (pid {pid}), back as pid {new} in {time.monotonic() - killed:.1f} s"


def kill_one_instance_of_each(instance: int = 1) -> Fault:
    """On a stack that runs several instances of each replay stage: ``kill -9`` one instance
    of the parser, the featurizer and the scorer, each once a few replays are past its
    stage (the other instances take its partitions meanwhile)."""
    stages = (
        ("parser", parsed, "parsed"),
        ("featurizer", featurized, "featurized"),
        ("scorer", scored, "scored"),
    )

    async def fault(run: Run) -> str:
        done = []
        for service, progress, past in stages:
            await run.wait_until(progress, f"{MID_STREAM} replays {past}")
            done.append(await kill_and_wait(run, service, instance))
        return "; ".join(done)

    return fault


def kill_after_emits(times: int = EMIT_KILLS) -> Fault:
    """``kill -9`` the scorer as soon as a ``scores.emitted`` record of the batch appears
    (read uncommitted: the first record of a transaction, before its commit), ``times`` times,
    each time waiting for an emit by the restarted scorer."""

    async def fault(run: Run) -> str:
        partitions = [
            TopicPartition(SCORES_EMITTED.name, p) for p in range(SCORES_EMITTED.partitions)
        ]
        consumer = AIOKafkaConsumer(
            bootstrap_servers=run.stack.settings.kafka_bootstrap,
            group_id=None,
            fetch_max_wait_ms=20,
        )
        await consumer.start()
        consumer.assign(partitions)
        kills = []
        try:
            for _ in range(times):
                await consumer.seek_to_end(*partitions)
                for partition in partitions:  # pin the end now: later records are the new scorer's
                    await consumer.position(partition)
                if not await next_emit(consumer, set(run.ids)):
                    raise FaultNotInjected(
                        f"{len(kills)} of {times} kills: no emit within {TRIGGER_SECONDS:g} s"
                    )
                kills.append(await kill_and_wait(run, "scorer"))
        finally:
            await consumer.stop()
        return f"{times} kills right after an emit; last: {kills[-1]}"

    return fault


async def next_emit(consumer: AIOKafkaConsumer, ids: set[str]) -> bool:
    deadline = time.monotonic() + TRIGGER_SECONDS
    while time.monotonic() < deadline:
        batches = await consumer.getmany(timeout_ms=100)
        for record in (r for records in batches.values() for r in records):
            if decode(ScoreEmitted, record.value).replay_id in ids:
                return True
    return False


SCENARIOS = (
    Scenario("postgres-down-20s", outage("postgres")),
    Scenario("kafka-down-20s", outage("kafka")),
    Scenario("kill-ingestor", kill_mid_stream("ingestor", ingested, "recorded")),
    Scenario("kill-parser", kill_mid_stream("parser", parsed, "parsed")),
    Scenario("kill-featurizer", kill_mid_stream("featurizer", featurized, "featurized")),
    Scenario("kill-scorer", kill_mid_stream("scorer", scored, "scored")),
    Scenario(f"kill-scorer-after-emit-x{EMIT_KILLS}", kill_after_emits()),
)


# Two instances of each replay stage, blobs in S3 (MinIO): no two services share a disk.
SCALE = {"parser": 2, "featurizer": 2, "scorer": 2}
BLOB_BUCKET = "chaos-blobs"
SCALED = Scenario("scaled-s3-kill-one-of-each", kill_one_instance_of_each())


async def no_fault(_: Run) -> str:
    return "none"


BASELINE = Scenario("no-fault", no_fault)


# ---------------------------------------------------------------- one scenario


@dataclass
class Outcome:
    scenario: str
    replays: int
    fault: str
    lost: list[str] = field(default_factory=list)  # with why, per replay
    doubled: list[str] = field(default_factory=list)
    stranded: list[str] = field(default_factory=list)
    misfailed: list[str] = field(default_factory=list)  # unparseable, not failed so
    down: list[str] = field(default_factory=list)
    crashes: int = 0  # restarts by the supervisor beyond the fault's own kills (not a check)
    error: str | None = None  # the fault could not be done as planned
    drain_seconds: float | None = None  # fault over -> every replay final
    seconds: float = 0.0  # first file in -> checks done

    @property
    def ok(self) -> bool:
        problems = (self.lost, self.doubled, self.stranded, self.misfailed, self.down)
        return self.error is None and not any(problems)

    def describe(self) -> str:
        lines = [f"{self.scenario}: {self.fault}" + (f"; {self.error}" if self.error else "")]
        if self.crashes:
            lines.append(f"  the supervisor restarted services {self.crashes} times besides")
        for label, items in (
            ("lost", self.lost),
            ("doubled", self.doubled),
            ("stranded", self.stranded),
            ("unparseable but not failed with the parser's reason", self.misfailed),
            ("services down", self.down),
        ):
            if items:
                lines.append(f"  {label}: {len(items)}: " + "; ".join(items[:5]))
        return "\n".join(lines)


async def run_scenario(stack: ChaosStack, scenario: Scenario, batch: list[Replay]) -> Outcome:
    probe = Probe(stack.settings.pg_dsn)
    run = Run(stack, probe, batch)
    inbox = stack.settings.inbox_dir / scenario.name
    started, restarts = time.monotonic(), stack.restarts()
    feeding = asyncio.create_task(feed(batch, inbox))
    outcome = Outcome(scenario.name, len(batch), fault="not done")
    try:
        try:
            outcome.fault = await scenario.fault(run)
        except FaultNotInjected as error:
            outcome.error = f"fault not done: {error}"
        finally:
            await feeding
        fault_over = time.monotonic()
        if await wait_until_final(run):
            outcome.drain_seconds = time.monotonic() - fault_over
        outcome.down = await services_down(stack)
        outcome.crashes = stack.restarts() - restarts - run.kills
        await check(run, outcome)
    finally:
        feeding.cancel()
        await probe.close()
        shutil.rmtree(inbox, ignore_errors=True)  # a restarted ingestor need not hash them again
    outcome.seconds = time.monotonic() - started
    return outcome


async def feed(batch: list[Replay], inbox: Path) -> None:
    """Copy the batch into the watched folder, ``FEED_PER_SECOND`` files a second; each file
    appears whole (written under a hidden name, then renamed)."""
    inbox.mkdir(parents=True, exist_ok=True)
    for i, replay in enumerate(batch):
        target = inbox / f"{i:02d}-{replay.path.name}"
        partial = inbox / f".{target.name}.part"
        await asyncio.to_thread(shutil.copyfile, replay.path, partial)
        partial.rename(target)
        await asyncio.sleep(1 / FEED_PER_SECOND)


async def wait_until_final(run: Run) -> bool:
    """Until every replay of the batch is final; False after ``DRAIN_SECONDS``, or once
    nothing changed for ``STALL_SECONDS``."""
    deadline = time.monotonic() + DRAIN_SECONDS
    last, changed = None, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - changed < STALL_SECONDS:
        statuses = await run.statuses()
        if len(statuses) == len(run.batch) and all(s in FINAL for s in statuses.values()):
            return True
        progress = (sorted(Counter(statuses.values()).items()), await run.scored())
        if progress != last:
            last, changed = progress, time.monotonic()
        await asyncio.sleep(0.5)
    return False


async def services_down(stack: ChaosStack) -> list[str]:
    """The services still down after ``SERVICES_UP_SECONDS`` (a restart may be under way)."""
    deadline = time.monotonic() + SERVICES_UP_SECONDS
    while (down := await stack.down_services()) and time.monotonic() < deadline:
        await asyncio.sleep(1)
    return down


# ---------------------------------------------------------------- the checks


async def check(run: Run, outcome: Outcome) -> None:
    """Fill in ``outcome``'s lost, doubled, stranded and misfailed replays from Postgres and
    from the committed ``scores.emitted`` events."""
    replays = {
        row["id"]: row
        for row in await run.probe.fetch(
            "SELECT id, status, status_reason FROM replays WHERE id = ANY($1)", run.ids
        )
    }
    players: dict[str, set[int]] = {}
    for row in await run.probe.fetch(
        "SELECT replay_id, player_index FROM replay_players WHERE replay_id = ANY($1)", run.ids
    ):
        players.setdefault(row["replay_id"], set()).add(row["player_index"])
    rows = {
        (row["replay_id"], row["player_index"], row["model_id"])
        for row in await run.probe.fetch(
            "SELECT replay_id, player_index, model_id FROM scores WHERE replay_id = ANY($1)",
            run.ids,
        )
    }
    events = await committed_scores(run.stack, set(run.ids))
    active = await run.probe.fetch(
        "SELECT id FROM models WHERE status = 'active' AND kind = 'impact'"
    )
    models = {row["id"] for row in active} | {key[2] for key in rows | set(events)}
    for replay in run.batch:
        row = replays.get(replay.sha256)
        status = row["status"] if row else "no row"
        name = replay.path.name
        if status not in FINAL:
            missing = _missing_scores(replay.sha256, players, models, rows, events)
            outcome.stranded.append(f"{name} ({status}{f'; {missing}' if missing else ''})")
        elif not replay.parseable:
            if status != "failed" or row["status_reason"] != replay.failure:
                outcome.misfailed.append(f"{name}: {status}, {row['status_reason']!r}")
        elif status == "failed":
            outcome.lost.append(f"{name}: failed: {row['status_reason']}")
        elif missing := _missing_scores(replay.sha256, players, models, rows, events):
            outcome.lost.append(f"{name}: {missing}")
        if doubled := sorted(k for k, n in events.items() if k[0] == replay.sha256 and n > 1):
            outcome.doubled.append(f"{name}: {len(doubled)} events more than once")


def _missing_scores(
    replay_id: str,
    players: dict[str, set[int]],
    models: set[int],
    rows: set[tuple[str, int, int]],
    events: Counter[tuple[str, int, int]],
) -> str | None:
    mine = players.get(replay_id, set())
    if not mine:
        return "no players recorded"
    if not models:
        return "no impact model"
    wanted = {(replay_id, p, m) for p in mine for m in models}
    no_row, no_event = wanted - rows, {k for k in wanted if events[k] == 0}
    if not no_row and not no_event:
        return None
    return f"{len(no_row)} score rows and {len(no_event)} events missing of {len(wanted)}"


async def committed_scores(stack: ChaosStack, ids: set[str]) -> Counter[tuple[str, int, int]]:
    """(replay, player, model) of every committed ``scores.emitted`` event of ``ids``, counted,
    from the start of the topic up to its last stable offset."""
    partitions = [TopicPartition(SCORES_EMITTED.name, p) for p in range(SCORES_EMITTED.partitions)]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=stack.settings.kafka_bootstrap,
        group_id=None,
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await consumer.start()
    counts: Counter[tuple[str, int, int]] = Counter()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        deadline = time.monotonic() + KAFKA_READ_SECONDS
        while time.monotonic() < deadline:
            positions = {p: await consumer.position(p) for p in partitions}
            if all(positions[p] >= end[p] for p in partitions):
                return counts
            batches = await consumer.getmany(timeout_ms=500)
            for record in (r for records in batches.values() for r in records):
                event = decode(ScoreEmitted, record.value)
                if event.replay_id in ids:
                    counts[(event.replay_id, event.player_index, event.model_id)] += 1
        raise AssertionError(f"scores.emitted not read to its end within {KAFKA_READ_SECONDS:g} s")
    finally:
        await consumer.stop()
