"""Bridge service: live game feeds -> ``live.frames``, keyed by match id.

- As a WebSocket *client* of each SOS plugin feed in ``RLIMPACT_BRIDGE_SOS_URLS``: reconnects
  with exponential backoff (with jitter, up to ``RLIMPACT_BRIDGE_RECONNECT_MAX_SECONDS``) and
  keeps following the same match across a reconnect.
- As a WebSocket *server* for custom plugins at ``/plugin`` on ``RLIMPACT_BRIDGE_PLUGIN_PORT``,
  open only to clients presenting ``RLIMPACT_BRIDGE_PLUGIN_TOKEN`` (off while it is unset).

A message that cannot be read is counted, logged and sent to ``events.invalid``; the feed goes
on. The receipt time of every message travels with its frame, for the latency metrics.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

import aiohttp
from aiohttp import WSMsgType, web
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata

from services.bridge.plugin import (
    PluginMessageError,
    PluginSession,
    presented_token,
    token_ok,
)
from services.bridge.sos import Skipped, SosMessageError, SosSession
from shared import metrics
from shared.backoff import Backoff, sleep_unless_stopped
from shared.events import EVENTS_INVALID, LIVE_FRAMES, InvalidEvent, LiveFrame, utcnow
from shared.kafka import EventProducer
from shared.service import ServiceContext, run_service

NAME = "bridge"
log = logging.getLogger(NAME)
MAX_RAW_IN_DEAD_LETTER = 20_000


class FrameSink:
    """Forwards frames to Kafka; counts skips; dead-letters what cannot be read.

    Frames go to Kafka in rounds: those that arrive within ``window`` seconds of a round's
    first are handed to the producer together, so they leave in one request for all their
    partitions. (The producer lingers per partition: frames of matches on other partitions,
    handed over one by one, would each go in a request of their own.)"""

    def __init__(self, producer: EventProducer, window: float = 0.0) -> None:
        self.producer, self.window = producer, window
        self._waiting: list[LiveFrame] = []
        self._round: asyncio.Task[None] | None = None

    async def accept(
        self,
        source: str,
        handle: Callable[[str, datetime], LiveFrame | Skipped | None],
        raw: str,
        received_at: datetime,
    ) -> str | None:
        """Handle one message; the error text when it could not be read."""
        metrics.EVENTS_IN.labels(NAME, f"feed:{source}").inc()
        try:
            result = handle(raw, received_at)
        except (SosMessageError, PluginMessageError) as error:
            await self.reject(source, raw, str(error))
            return str(error)
        if isinstance(result, Skipped):
            metrics.LIVE_FRAMES_SKIPPED.labels(NAME, result.reason).inc()
        elif result is not None:
            # not waiting for the broker: the feed's next frame is read meanwhile
            self._waiting.append(result)
            if self._round is None or self._round.done():
                self._round = asyncio.create_task(self._send_rounds())
        return None

    async def _send_rounds(self) -> None:
        """Until no frame waits: after ``window``, hand every waiting frame to the producer,
        in the order they came (one round at a time, so a match's frames stay in order)."""
        while self._waiting:
            await asyncio.sleep(self.window)
            frames, self._waiting = self._waiting, []
            for frame in frames:
                try:
                    sent = await self.producer.enqueue(LIVE_FRAMES, frame)
                except KafkaError as error:
                    _count_failed_send(error)
                    continue
                sent.add_done_callback(_log_failed_send)

    async def flush(self) -> None:
        """Hand the waiting frames to the producer (before it stops)."""
        if self._round is not None:
            await self._round

    async def reject(self, source: str, raw: str, reason: str) -> None:
        metrics.ERRORS.labels(NAME, f"invalid_{source}_message").inc()
        log.warning("unreadable %s message: %s", source, reason[:300])
        await self.producer.send(
            EVENTS_INVALID,
            InvalidEvent(topic=f"bridge:{source}", reason=reason, raw=raw[:MAX_RAW_IN_DEAD_LETTER]),
        )


def _log_failed_send(sent: asyncio.Future[RecordMetadata]) -> None:
    if not sent.cancelled() and (error := sent.exception()) is not None:
        _count_failed_send(error)


def _count_failed_send(error: BaseException) -> None:
    metrics.ERRORS.labels(NAME, type(error).__name__).inc()
    log.warning("live frame not sent: %s", error)


async def follow_sos_feed(
    url: str, sink: FrameSink, stop: asyncio.Event, max_backoff: float
) -> None:
    """Stay connected to one SOS feed until ``stop``, reconnecting with backoff."""
    session = SosSession()
    backoff = Backoff(max_backoff)
    connected = metrics.FEED_CONNECTED.labels(url)
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            try:
                async with http.ws_connect(url, heartbeat=10, max_msg_size=16 * 2**20) as ws:
                    connected.set(1)
                    backoff.reset()
                    log.info("connected to SOS feed %s", url)
                    async for message in ws:
                        received_at = utcnow()
                        if message.type == WSMsgType.TEXT:
                            await sink.accept("sos", session.handle, message.data, received_at)
                        elif message.type == WSMsgType.ERROR:
                            break
                log.warning("SOS feed %s closed the connection", url)
            except (TimeoutError, aiohttp.ClientError, OSError) as error:
                if backoff.attempt == 0:
                    log.warning("SOS feed %s unreachable (%s): retrying with backoff", url, error)
            connected.set(0)
            metrics.FEED_RECONNECTS.labels(url).inc()
            await sleep_unless_stopped(stop, backoff.next_delay())


def plugin_app(ctx: ServiceContext, sink: FrameSink) -> web.Application:
    session = PluginSession()
    expected = ctx.settings.bridge_plugin_token

    async def connect(request: web.Request) -> web.StreamResponse:
        token = presented_token(request.headers.get("Authorization"), request.query.get("token"))
        if not token_ok(token, expected):
            metrics.ERRORS.labels(NAME, "plugin_unauthorized").inc()
            raise web.HTTPUnauthorized(text="a valid token is required (Authorization: Bearer)")
        ws = web.WebSocketResponse(heartbeat=10, max_msg_size=2**20)
        await ws.prepare(request)
        log.info("plugin connected from %s", request.remote)
        async for message in ws:
            received_at = utcnow()
            if message.type == WSMsgType.TEXT:
                error = await sink.accept("plugin", session.handle, message.data, received_at)
                if error is not None:
                    await ws.send_json({"error": error})
            elif message.type == WSMsgType.BINARY:
                await ws.send_json({"error": "send JSON text messages"})
        return ws

    app = web.Application()
    app.router.add_get("/plugin", connect)
    return app


async def serve_plugin_endpoint(ctx: ServiceContext, sink: FrameSink) -> web.AppRunner | None:
    settings = ctx.settings
    token = settings.bridge_plugin_token
    if token is None or not token.get_secret_value():
        log.info("custom-plugin endpoint off: RLIMPACT_BRIDGE_PLUGIN_TOKEN is not set")
        return None
    runner = web.AppRunner(plugin_app(ctx, sink), access_log=None)
    await runner.setup()
    host, port = settings.bridge_plugin_host, settings.bridge_plugin_port
    await web.TCPSite(runner, host, port).start()
    log.info("custom-plugin endpoint on ws://%s:%d/plugin", host, port)
    return runner


async def run(ctx: ServiceContext) -> None:
    # the low-latency producer (run_service's low_latency); the sink's rounds gather frames
    sink = FrameSink(ctx.producer, ctx.settings.live_linger_ms / 1000)
    plugin_endpoint = await serve_plugin_endpoint(ctx, sink)
    feeds = [
        asyncio.create_task(
            follow_sos_feed(url, sink, ctx.stop, ctx.settings.bridge_reconnect_max_seconds)
        )
        for url in ctx.settings.sos_urls
    ]
    log.info("following %d SOS feed(s): %s", len(feeds), ", ".join(ctx.settings.sos_urls))
    await ctx.stop.wait()
    for task in feeds:
        task.cancel()
    await asyncio.gather(*feeds, return_exceptions=True)
    if plugin_endpoint is not None:
        await plugin_endpoint.cleanup()
    await sink.flush()


def main() -> None:
    # Postgres is never used here, and the one producer is the live path's.
    run_service(NAME, run, latency_bound=True, database=False, low_latency=True)


if __name__ == "__main__":
    main()
