"""The model registry's moves that other services must hear of."""

from __future__ import annotations

from shared import db
from shared.events import MODEL_PROMOTED, ModelPromoted
from shared.service import ServiceContext


async def promote_and_announce(ctx: ServiceContext, model_id: int) -> db.ModelRecord:
    """Make a registered model the active one of its kind and send ``model.promoted``, so that
    the services following the registry (scorer, live) load it."""
    async with ctx.pool.acquire() as conn:
        record = await db.promote_model(conn, model_id)
    await ctx.producer.send(
        MODEL_PROMOTED,
        ModelPromoted(model_id=record.id, model_version=record.version, kind=record.kind),
    )
    return record
