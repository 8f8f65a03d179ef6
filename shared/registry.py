"""Registering and promoting model files: the one code path of ``rlimpact models register``
and of the stack's first start, which makes the shipped model the active impact model when
none is active, so that replays are scored with no manual step.

The caller loads the file first (that checks it is a usable model and gives its kind and
version); here it is stored in the blob store, recorded in ``models`` and, when asked, made
active and announced on ``model.promoted``.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

from shared import db
from shared.db import ModelRecord
from shared.events import MODEL_PROMOTED, ModelPromoted
from shared.kafka import EventProducer
from shared.settings import Settings
from shared.storage import open_blob_store, sha256_file

if TYPE_CHECKING:
    from shared.service import ServiceContext

log = logging.getLogger(__name__)
# pg advisory lock: one instance bootstraps the default model (recovery's reconciler: ...101)
DEFAULT_MODEL_LOCK = 7324102


async def register_file(
    conn: asyncpg.Connection,
    settings: Settings,
    file: Path,
    *,
    kind: str,
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
