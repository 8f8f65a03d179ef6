"""Which model the live path scores with: the registry's active one, else the shipped default.

Unlike the replay scorer (which waits for a model), live matches are scored from the first
frame: with ``models/default/impact.onnx`` until a model is promoted in the registry, then
with that one, switched over without a restart.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from services.live.state import ScoringModel
from shared import db, metrics
from shared.backoff import sleep_unless_stopped
from shared.model import DEFAULT_MODEL_FILE, ImpactModel, ModelSchemaError
from shared.settings import Settings
from shared.storage import open_blob_store, open_checked, read_trusted

log = logging.getLogger(__name__)


class LiveModel:
    def __init__(self, service: str, settings: Settings, pool: asyncpg.Pool) -> None:
        self.service, self.settings, self.pool = service, settings, pool
        self.current: ScoringModel | None = None
        self._failed: set[str] = set()  # models that could not be loaded: not retried

    async def refresh(self) -> None:
        """Load the registry's active model if it changed; fall back to the shipped one."""
        async with self.pool.acquire() as conn:
            record = await db.active_model(conn)
        if record is not None:
            if self.current is not None and self.current.model_id == record.id:
                return
            if loaded := await self._load(record.uri, record.id, record.version, record.sha256):
                self._use(loaded)
                return
        if self.current is None or (record is None and self.current.model_id is not None):
            path = self.settings.default_model_dir / DEFAULT_MODEL_FILE
            if loaded := await self._load(path.absolute().as_uri(), None, None, None):
                self._use(loaded)

    async def _load(
        self, uri: str, model_id: int | None, version: str | None, sha256: str | None
    ) -> ScoringModel | None:
        key = f"{uri}:{model_id}"
        if key in self._failed:
            return None
        try:
            model = await asyncio.to_thread(self._read, uri, sha256)
        except (ModelSchemaError, OSError, RuntimeError, ValueError) as error:
            self._failed.add(key)
            self._fail(f"{uri}: {error}", type(error).__name__)
            return None
        return ScoringModel(model, model_id, version or model.version)

    def _read(self, uri: str, sha256: str | None) -> ImpactModel:
        store = open_blob_store(self.settings)
        file = open_checked(store, uri, sha256) if sha256 else read_trusted(store, uri)
        with file as path:
            return ImpactModel(path)

    def _use(self, loaded: ScoringModel) -> None:
        self.current = loaded
        metrics.ACTIVE_MODEL.labels(self.service).set(loaded.model_id or 0)
        source = f"registry id {loaded.model_id}" if loaded.model_id else "the shipped default"
        log.info("live scoring with model %s (%s)", loaded.version, source)

    def _fail(self, what: str, reason: str) -> None:
        metrics.ERRORS.labels(self.service, reason).inc()
        log.error("model not loaded: %s", what)

    async def follow(self, stop: asyncio.Event) -> None:
        """Re-read the registry every ``model_poll_seconds`` until ``stop``."""
        while not stop.is_set():
            try:
                await self.refresh()
            except (OSError, asyncpg.PostgresError) as error:
                metrics.ERRORS.labels(self.service, "model_registry").inc()
                log.warning("model registry unreachable: %s", error)
            await sleep_unless_stopped(stop, self.settings.model_poll_seconds)
