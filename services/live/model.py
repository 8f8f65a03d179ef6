"""Which model the live path scores with: the registry's active one, else the shipped default.

Unlike the replay scorer (which waits for a model), live matches are scored from the first
frame: with ``models/default/impact.onnx`` until a model is promoted in the registry, then
with that one, switched over without a restart. The registry is followed by
:class:`shared.registry.ModelFollower`, as the scorer follows it.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from services.live.state import ScoringModel
from shared import metrics
from shared.backoff import sleep_unless_stopped
from shared.db import ModelRecord
from shared.model import DEFAULT_MODEL_FILE, ImpactModel
from shared.registry import MODEL_LOAD_ERRORS, LoadedModel, ModelFollower
from shared.retry import OutageLog, RetryPolicy, is_transient
from shared.settings import Settings

log = logging.getLogger(__name__)


class LiveModel:
    def __init__(self, service: str, settings: Settings, pool: asyncpg.Pool) -> None:
        self.service, self.settings, self.pool = service, settings, pool
        self.registry = ModelFollower(service, settings, "impact", ImpactModel)
        self.current: ScoringModel | None = None
        self._no_default = False  # the shipped model could not be loaded: not retried

    async def refresh(self) -> None:
        """Load the registry's active model if it changed; fall back to the shipped one."""
        record = await self.registry.active(self.pool)
        if record is not None:
            if self.current is not None and self.current.model_id == record.id:
                return
            if loaded := await self._follow(record):
                self._use(ScoringModel(loaded.model, record.id, record.version))
                return
        if self.current is None or (record is None and self.current.model_id is not None):
            self.registry.current = None  # a model promoted again later is loaded again
            if shipped := await self._shipped():
                self._use(shipped)

    async def _follow(self, record: ModelRecord) -> LoadedModel[ImpactModel] | None:
        """The registry's model, loaded now; None if it is loaded already or will not load,
        or while the blob store is down (tried again at the next poll, not given up)."""
        try:
            return await self.registry.follow(record)
        except MODEL_LOAD_ERRORS as error:
            if not is_transient(error):
                raise
            metrics.ERRORS.labels(self.service, "model_registry").inc()
            log.warning("model %s not loaded for now: %s", record.version, error)
            return None

    async def _shipped(self) -> ScoringModel | None:
        if self._no_default:
            return None
        path = self.settings.default_model_dir / DEFAULT_MODEL_FILE
        try:
            model = await asyncio.to_thread(ImpactModel, path)
        except MODEL_LOAD_ERRORS as error:
            self._no_default = True
            metrics.ERRORS.labels(self.service, "model_load").inc()
            log.error("the shipped model %s cannot be used: %s", path, error)
            return None
        return ScoringModel(model, None, model.version)

    def _use(self, loaded: ScoringModel) -> None:
        self.current = loaded
        metrics.ACTIVE_MODEL.labels(self.service).set(loaded.model_id or 0)
        source = f"registry id {loaded.model_id}" if loaded.model_id else "the shipped default"
        log.info("live scoring with model %s (%s)", loaded.version, source)

    async def follow(self, stop: asyncio.Event) -> None:
        """Re-read the registry every ``model_poll_seconds`` until ``stop``; an outage is
        logged once, then every 30 s, and when it is over."""
        outage = OutageLog(log, "model registry unreachable", RetryPolicy().log_every_seconds)
        while not stop.is_set():
            try:
                await self.refresh()
                outage.recovered()
            except (OSError, asyncpg.PostgresError) as error:
                metrics.ERRORS.labels(self.service, "model_registry").inc()
                outage.failed(error)
            await sleep_unless_stopped(stop, self.settings.model_poll_seconds)
