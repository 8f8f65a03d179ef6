"""Recovery: a replay that is neither scored nor failed is driven on from the stage it reached.

A replay is *final* once ``scored`` or ``failed`` (``featurized`` with score rows for the active
impact model counts as scored too, for databases without the ``scored`` status). Any other
replay whose status has not moved for ``RLIMPACT_RECONCILE_AFTER_SECONDS`` is stranded (an
outage lost its event, a crash came between two steps) and is *re-driven*: the event that
moves it on is sent again, rebuilt from Postgres and the blob store:

==========================  =====================================================
status                      re-sent
==========================  =====================================================
``received``, ``uploaded``  ``replay.uploaded`` (from the ``replays`` row)
``parsed``                  ``frames.parsed`` (the frames file + ``replay_players``)
``featurized``              ``features.ready`` (the features file), unless the active
                            model has scored it (the scorer's own redelivery covers
                            those) or no model is active (the scorer waits for one)
``failed`` (by hand only)   ``replay.uploaded``, its bytes being stored
==========================  =====================================================

When a stage's file is gone, the replay is re-driven from the stage before. Handlers downstream
are idempotent, so a re-drive that turns out unnecessary doubles nothing final. The re-drive
first touches the replay's status (only if it is still the one read), so the next pass leaves it
alone for another ``RECONCILE_AFTER_SECONDS``, and a replay that moved on meanwhile is skipped.

:func:`reconcile` is one pass (the ingestor runs it at start-up and every
``RLIMPACT_RECONCILE_INTERVAL_SECONDS``; one instance at a time, by a Postgres advisory lock);
:func:`retry` is ``rlimpact retry``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zipfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import asyncpg

from shared import db, metrics
from shared.backoff import sleep_unless_stopped
from shared.events import (
    FEATURES_READY,
    FRAMES_PARSED,
    REPLAY_UPLOADED,
    Event,
    FeaturesReady,
    FramesParsed,
    PlayerInfo,
    ReplayUploaded,
    Topic,
)
from shared.frames import ParsedReplay
from shared.service import ServiceContext
from shared.storage import BlobStore

log = logging.getLogger(__name__)

RECONCILE_LOCK = 7324101  # pg advisory lock key: one reconciler at a time (migrate uses ...100)
STAGE = "recovery"  # the stage recorded in replay_status_history

# The event that moves a replay on from each status; the status a re-drive with each event sets;
# the event to fall back on when the stage's file is gone.
NEXT_EVENT: dict[str, Topic] = {
    "received": REPLAY_UPLOADED,
    "uploaded": REPLAY_UPLOADED,
    "parsed": FRAMES_PARSED,
    "featurized": FEATURES_READY,
}
AWAITING: dict[Topic, str] = {
    REPLAY_UPLOADED: "uploaded",
    FRAMES_PARSED: "parsed",
    FEATURES_READY: "featurized",
}
FALLBACK: dict[Topic, Topic] = {FEATURES_READY: FRAMES_PARSED, FRAMES_PARSED: REPLAY_UPLOADED}
# A stage's file that is gone or unreadable (not the store being down: BlobStoreUnavailable).
UNUSABLE_FILE = (FileNotFoundError, ValueError, zipfile.BadZipFile)
# What ends a pass, to be tried again at the next tick: a dependency that is down.
DEPENDENCY_DOWN = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, RuntimeError)


@dataclass(frozen=True)
class ReplayState:
    """What Postgres knows of one replay, as the re-drive rules need it."""

    replay_id: str
    status: str
    idle_seconds: float  # since its status last changed
    scored_by_active: bool  # it has score rows for the active impact model
    model_active: bool  # an impact model is active at all
    uri: str = ""
    filename: str = ""
    size_bytes: int = 0
    source: str = ""
    frames_uri: str | None = None
    features_uri: str | None = None
    n_frames: int | None = None
    status_reason: str | None = None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> ReplayState:
        return cls(
            replay_id=row["id"],
            status=row["status"],
            idle_seconds=row["idle_seconds"],
            scored_by_active=row["scored_by_active"],
            model_active=row["model_active"],
            uri=row["uri"],
            filename=row["filename"],
            size_bytes=row["size_bytes"],
            source=row["source"],
            frames_uri=row["frames_uri"],
            features_uri=row["features_uri"],
            n_frames=row["n_frames"],
            status_reason=row["status_reason"],
        )


@dataclass(frozen=True)
class Plan:
    """What to do with one replay: send ``topic`` again (None: nothing), and why."""

    replay_id: str
    topic: Topic | None
    why: str


# ---------------------------------------------------------------- the rules (pure)


def is_final(state: ReplayState) -> bool:
    if state.status in db.FINAL_STATUSES:
        return True
    return state.status == "featurized" and state.scored_by_active


def plan_redrive(state: ReplayState, min_idle_seconds: float) -> Plan:
    """The reconciler's rule for one replay (``min_idle_seconds`` 0: ignore the age)."""
    if is_final(state):
        return Plan(state.replay_id, None, f"{_final_word(state)}: nothing to do")
    if state.idle_seconds < min_idle_seconds:
        return Plan(state.replay_id, None, f"{state.status} {state.idle_seconds:.0f} s ago: moving")
    if state.status == "featurized" and not state.model_active:
        return Plan(state.replay_id, None, "featurized; no impact model is active: waiting for one")
    topic = NEXT_EVENT.get(state.status)
    if topic is None:
        return Plan(state.replay_id, None, f"unknown status {state.status!r}")
    return Plan(state.replay_id, topic, f"{state.status}: {topic.name} sent again")


def plan_failed(state: ReplayState, bytes_stored: bool) -> Plan:
    """``retry --failed``: a failed replay is parsed again if its bytes are stored."""
    if state.status != "failed":
        return plan_redrive(state, 0)
    if not bytes_stored:
        return Plan(state.replay_id, None, "failed, and its bytes are not stored: cannot retry")
    return Plan(state.replay_id, REPLAY_UPLOADED, f"failed ({state.status_reason}): parsed again")


def _final_word(state: ReplayState) -> str:
    if state.status == "featurized":
        return "scored by the active model"
    return state.status


# ---------------------------------------------------------------- the events


def rebuild_event(
    store: BlobStore, state: ReplayState, players: list[PlayerInfo], topic: Topic
) -> tuple[Topic, Event]:
    """The event of ``topic`` for the replay (``players``: its ``replay_players``), read from
    the blob store; when its stage's file is gone, the event of the stage before. Blocking."""
    try:
        if topic is FEATURES_READY:
            return topic, _features_ready(store, state, players)
        if topic is FRAMES_PARSED:
            return topic, _frames_parsed(store, state, players)
    except UNUSABLE_FILE as error:
        earlier = FALLBACK[topic]
        log.warning("%s: %s; re-driving with %s", state.replay_id[:12], error, earlier.name)
        return rebuild_event(store, state, players, earlier)
    return REPLAY_UPLOADED, ReplayUploaded(
        replay_id=state.replay_id,
        uri=state.uri,
        filename=state.filename,
        size_bytes=state.size_bytes,
        source=state.source,
    )


def _frames_parsed(store: BlobStore, state: ReplayState, players: list[PlayerInfo]) -> FramesParsed:
    if state.frames_uri is None:
        raise FileNotFoundError("no frames file recorded")
    with store.local_path(state.frames_uri) as path:
        parsed = ParsedReplay.load(path)
    return FramesParsed(
        replay_id=state.replay_id,
        frames_uri=state.frames_uri,
        n_frames=parsed.n_frames,
        fps=parsed.fps,
        team_size=parsed.team_size,
        players=players or parsed.players,
        goals=parsed.goals,
    )


def _features_ready(
    store: BlobStore, state: ReplayState, players: list[PlayerInfo]
) -> FeaturesReady:
    from shared.features.dataset import feature_file_version

    if state.features_uri is None or state.n_frames is None:
        raise FileNotFoundError("no features file recorded")
    with store.local_path(state.features_uri) as path:
        version = feature_file_version(path)
    return FeaturesReady(
        replay_id=state.replay_id,
        features_uri=state.features_uri,
        feature_schema_version=version,
        n_frames=state.n_frames,
        players=players,
    )


# ---------------------------------------------------------------- acting


async def redrive(ctx: ServiceContext, store: BlobStore, state: ReplayState, plan: Plan) -> bool:
    """Carry out a plan with a topic; False if the replay moved on meanwhile (nothing sent)."""
    assert plan.topic is not None
    async with ctx.pool.acquire() as conn:
        players = await db.replay_players(conn, state.replay_id)
        topic, event = await asyncio.to_thread(rebuild_event, store, state, players, plan.topic)
        reason = f"re-driven: {plan.why}"
        moved = AWAITING[topic]
        if not await db.move_status(conn, state.replay_id, state.status, moved, STAGE, reason):
            return False
    await ctx.producer.send(topic, event)
    metrics.REDRIVES.labels(ctx.name, topic.name).inc()
    log.info("re-drove %s: %s", state.replay_id[:12], plan.why)
    return True


@contextlib.asynccontextmanager
async def reconciler_lock(pool: asyncpg.Pool, wait: bool) -> AsyncIterator[bool]:
    """Hold the reconciler's advisory lock for the block; yields False (without waiting, unless
    ``wait``) when another instance holds it."""
    async with pool.acquire() as conn, conn.transaction():
        if wait:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", RECONCILE_LOCK)
            yield True
        else:
            yield await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", RECONCILE_LOCK)


async def reconcile(
    ctx: ServiceContext, store: BlobStore, min_idle_seconds: float | None = None
) -> list[Plan]:
    """One pass: re-drive every stranded replay; return what was re-driven. Does nothing while
    another instance's pass runs. ``min_idle_seconds`` defaults to the setting."""
    if min_idle_seconds is None:
        min_idle_seconds = ctx.settings.reconcile_after_seconds
    async with reconciler_lock(ctx.pool, wait=False) as held:
        if not held:
            log.info("another reconciler is running: this pass is skipped")
            return []
        return await _redrive_stranded(ctx, store, min_idle_seconds)


async def _redrive_stranded(
    ctx: ServiceContext, store: BlobStore, min_idle_seconds: float
) -> list[Plan]:
    async with ctx.pool.acquire() as conn:
        states = [ReplayState.from_row(row) for row in await db.unfinished_replays(conn)]
    done: list[Plan] = []
    for state in states:
        plan = plan_redrive(state, min_idle_seconds)
        if plan.topic is None:
            continue
        try:
            if await redrive(ctx, store, state, plan):
                done.append(plan)
        except DEPENDENCY_DOWN:
            raise
        except Exception:  # one replay's odd row must not stop the others' recovery
            log.exception("cannot re-drive %s", state.replay_id[:12])
    return done


async def reconcile_forever(ctx: ServiceContext, store: BlobStore) -> None:
    """At start-up and then every ``RLIMPACT_RECONCILE_INTERVAL_SECONDS`` until stopped; a
    failed pass (Postgres or Kafka down) is logged and tried again at the next tick."""
    interval = ctx.settings.reconcile_interval_seconds
    first = True
    while not ctx.stop.is_set():
        try:
            plans = await reconcile(ctx, store)
            if plans or first:
                log.info("reconcile pass: re-drove %d stranded replays", len(plans))
            first = False
        except DEPENDENCY_DOWN as error:
            log.warning("reconcile pass failed, retrying in %.0f s: %s", interval, error)
        await sleep_unless_stopped(ctx.stop, interval)


# ---------------------------------------------------------------- by hand


class UnknownReplay(LookupError):
    """An id or prefix that names no replay, or more than one."""


async def resolve_ids(conn: asyncpg.Connection, refs: Sequence[str]) -> list[str]:
    """Full ids for ids or unique id prefixes; UnknownReplay names every one that is not."""
    ids: list[str] = []
    errors: list[str] = []
    for ref in refs:
        prefix = ref.strip().lower()
        matches = await db.replay_ids_with_prefix(conn, prefix) if _is_hex(prefix) else []
        if len(matches) == 1:
            ids.append(matches[0])
        elif not matches:
            errors.append(f"no replay with id {ref!r}")
        else:
            shown = ", ".join(m[:16] for m in matches)
            errors.append(f"{ref!r} is the start of several replays' ids ({shown}…)")
    if errors:
        raise UnknownReplay("; ".join(errors))
    return list(dict.fromkeys(ids))


def _is_hex(text: str) -> bool:
    return 0 < len(text) <= 64 and all(c in "0123456789abcdef" for c in text)


@dataclass(frozen=True)
class RetryOutcome:
    plan: Plan
    sent: bool


async def retry(
    ctx: ServiceContext,
    store: BlobStore,
    refs: Sequence[str] = (),
    *,
    failed: bool = False,
    stuck: bool = False,
) -> list[RetryOutcome]:
    """``rlimpact retry``: the named replays (ids or unique prefixes; a failed one is parsed
    again), with ``failed`` every failed replay whose bytes are stored, with ``stuck`` what the
    reconciler would re-drive, the age threshold aside. Waits for a running reconcile pass."""
    async with ctx.pool.acquire() as conn:
        states = await _retry_states(conn, refs, failed=failed, stuck=stuck)
    outcomes: list[RetryOutcome] = []
    async with reconciler_lock(ctx.pool, wait=True):
        for state in states:
            if state.status == "failed":
                stored = await asyncio.to_thread(store.exists, state.uri)
                plan = plan_failed(state, stored)
            else:
                plan = plan_redrive(state, 0)
            sent = plan.topic is not None and await redrive(ctx, store, state, plan)
            outcomes.append(RetryOutcome(plan, sent))
    return outcomes


async def _retry_states(
    conn: asyncpg.Connection, refs: Sequence[str], *, failed: bool, stuck: bool
) -> list[ReplayState]:
    rows = list(await db.replay_states(conn, await resolve_ids(conn, refs))) if refs else []
    if failed:
        rows += await db.failed_replays(conn)
    if stuck:
        rows += await db.unfinished_replays(conn)
    unique = {row["id"]: ReplayState.from_row(row) for row in rows}
    return list(unique.values())
