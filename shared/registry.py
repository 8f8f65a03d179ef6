"""The model registry's two sides: registering and promoting model files, and following the
active models.

Registering: the one code path of ``rlimpact models register`` and of the stack's first start,
which makes the shipped model the active impact model when none is active, so that replays are
scored with no manual step. The caller loads the file first (that checks it is a usable model
and gives its kind and version); here it is stored in the blob store, recorded in ``models``
and, when asked, made active and announced on ``model.promoted``.

Following: :class:`ModelFollower` loads the active model of a kind whenever another one becomes
active (hot reload, no restart), for the scorer (impact and skill) and the live service
(impact); :func:`follow_promotions` tells a follower at once when a model is promoted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeGuard, TypeVar

import asyncpg
from aiokafka import AIOKafkaConsumer

from shared import db, metrics
from shared.db import ModelRecord
from shared.events import MODEL_PROMOTED, EventDecodeError, ModelKind, ModelPromoted, decode
from shared.kafka import EventProducer, started
from shared.model import ModelSchemaError
from shared.retry import RetryPolicy, is_transient
from shared.settings import Settings
from shared.storage import BlobStore, open_blob_store, open_checked, sha256_file

if TYPE_CHECKING:
    from shared.service import ServiceContext

log = logging.getLogger(__name__)
# pg advisory lock: one instance bootstraps the default model (recovery's reconciler: ...101)
DEFAULT_MODEL_LOCK = 7324102
M = TypeVar("M")
# What loading a model file can raise when the file is not a usable model (or is gone).
MODEL_LOAD_ERRORS = (ModelSchemaError, OSError, RuntimeError, ValueError)


async def register_file(
    conn: asyncpg.Connection,
    settings: Settings,
    file: Path,
    *,
    kind: ModelKind,
    version: str,
    feature_schema_version: int,
) -> ModelRecord:
    """Store the file (content-addressed) and register it as a candidate."""
    sha256 = await asyncio.to_thread(sha256_file, file)
    store = open_blob_store(settings)
    uri = await asyncio.to_thread(store.put_file, "models", sha256, ".onnx", file)
    return await db.register_model(
        conn,
        name=kind,
        version=version,
        uri=uri,
        sha256=sha256,
        feature_schema_version=feature_schema_version,
        metrics={},
        kind=kind,
    )


async def announce(producer: EventProducer, record: ModelRecord) -> None:
    await producer.send(
        MODEL_PROMOTED,
        ModelPromoted(model_id=record.id, model_version=record.version, kind=record.kind),
    )


async def ensure_active_impact_model(
    pool: asyncpg.Pool,
    producer: EventProducer,
    settings: Settings,
    file: Path,
    *,
    version: str,
    feature_schema_version: int,
) -> ModelRecord | None:
    """Register (or find) ``file`` and promote it if no impact model is active; return it,
    or None when one was active already. Several instances may race here: an advisory lock
    lets one of them do it, the others then find the active model."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", DEFAULT_MODEL_LOCK)
        if await db.active_model(conn, "impact") is not None:
            return None
        found = await db.find_model(conn, version) or await register_file(
            conn,
            settings,
            file,
            kind="impact",
            version=version,
            feature_schema_version=feature_schema_version,
        )
        record = await db.promote_model(conn, found.id)
    log.info("no impact model was active: promoted the shipped model %s", record.version)
    await announce(producer, record)
    return record


async def promote_and_announce(ctx: ServiceContext, model_id: int) -> ModelRecord:
    """Make a registered model the active one of its kind and send ``model.promoted``, so that
    the services following the registry (scorer, live) load it."""
    async with ctx.pool.acquire() as conn:
        record = await db.promote_model(conn, model_id)
    await announce(ctx.producer, record)
    return record


# ---------------------------------------------------------------- following the active models


@dataclass(frozen=True)
class LoadedModel(Generic[M]):
    """A registered model in use: its record and the model loaded from its file."""

    record: ModelRecord
    model: M


async def load_checked(
    record: ModelRecord, store: BlobStore, load: Callable[[Path], M]
) -> LoadedModel[M]:
    """``load`` the model file of ``record``, checked against its registered hash."""

    def read() -> M:
        with open_checked(store, record.uri, record.sha256) as path:
            return load(path)

    return LoadedModel(record, await asyncio.to_thread(read))


class ModelFollower(Generic[M]):
    """The registry's active model of one kind, loaded (by ``load``) when another one becomes
    active. A model whose file will not load is logged, counted (``model_load``) and not tried
    again, and the one in use is kept; a blob store that is down raises a transient error, so
    that the caller tries again later."""

    def __init__(
        self, service: str, settings: Settings, kind: ModelKind, load: Callable[[Path], M]
    ) -> None:
        self.service, self.kind, self.load = service, kind, load
        self.store = open_blob_store(settings)
        self.current: LoadedModel[M] | None = None
        self._failed: set[int] = set()  # model ids that would not load: not retried

    async def active(self, pool: asyncpg.Pool) -> ModelRecord | None:
        """The registry's active model of this kind, if any."""
        async with pool.acquire() as conn:
            return await db.active_model(conn, self.kind)

    async def follow(self, record: ModelRecord | None) -> LoadedModel[M] | None:
        """Load ``record`` (the active model) unless it is loaded already or known not to load;
        return it when it was loaded now."""
        if not self._wanted(record):
            return None
        try:
            loaded = await load_checked(record, self.store, self.load)
        except MODEL_LOAD_ERRORS as error:
            if is_transient(error):  # the blob store is down: try again later
                raise
            self._failed.add(record.id)
            metrics.ERRORS.labels(self.service, "model_load").inc()
            log.error("model %s not loaded, keeping the current one: %s", record.version, error)
            return None
        self.current = loaded
        return loaded

    def _wanted(self, record: ModelRecord | None) -> TypeGuard[ModelRecord]:
        """A model is active that is neither loaded nor known not to load."""
        if record is None or record.id in self._failed:
            return False
        return self.current is None or self.current.record.id != record.id


async def follow_promotions(
    settings: Settings, service: str, stop: asyncio.Event, promoted: Callable[[], None]
) -> None:
    """Call ``promoted`` for every ``model.promoted`` event, until ``stop``.

    No consumer group: every instance sees every promotion. Starts at the end of the topic:
    what was promoted before the instance started is in the registry already (and a follower's
    registry poll catches anything missed while Kafka was away).
    """
    consumer = await started(
        AIOKafkaConsumer,
        settings,
        f"{service}: Kafka consumer of {MODEL_PROMOTED.name}",
        RetryPolicy.of(settings),
        stop,
        MODEL_PROMOTED.name,
        group_id=None,
        auto_offset_reset="latest",
    )
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500)
            for record in (r for records in batches.values() for r in records):
                try:
                    event = decode(ModelPromoted, record.value)
                except EventDecodeError as error:  # the registry poll still catches up
                    log.warning("ignoring a model.promoted message: %s", error)
                    continue
                log.info("model %s (%s) promoted: reloading", event.model_version, event.kind)
                promoted()
    finally:
        await consumer.stop()
