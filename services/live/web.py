"""Score streams for browsers and overlays: Server-Sent Events, a JSON snapshot, the live page.

The streams are fed from Kafka (``scores.live`` and ``scores.emitted``, read by a consumer
outside any group), so every instance of the live service shows every match, whichever
instance scored it. They come in batches at most 50 ms apart. A (re)started instance begins
``scores.live`` a few seconds back, so that the page shows the matches in progress at once.

- ``GET /``: the live page (each player's impact and each team's P(score) over the match,
  with the goals, updating while the match plays).
- ``GET /overlay[?match=ID]``: the same for a broadcast (an OBS browser source): transparent
  background, one match (without ``match``: the first in progress, until it ends), its
  P(score) and top players.
- ``GET /scores/stream[?match=ID]``: ``text/event-stream``; ``event: live`` carries a
  ``LiveScore``, ``event: replay`` a ``ScoreEmitted`` (both as in ``shared/events.py``),
  ``event: point`` the update's P(score) point and new goals (``services/live/timeline.py``).
  On connect, each match in progress is sent first: ``event: timeline`` (its points so far),
  then its latest ``live`` update.
- ``GET /scores/latest``: the latest ``LiveScore`` of each match in progress, as a JSON list.
- ``GET /replays[?page=N]`` and ``GET /replays/{id}``: the stored replays scored with the active
  impact model, and each one's report page (``services/live/replays.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from importlib import resources

from aiohttp import web
from aiokafka import AIOKafkaConsumer

from services.live.replays import ReplayCatalog, replay_routes
from services.live.timeline import MatchTimeline, point_json, timeline_json
from shared import metrics
from shared.events import (
    SCORES_EMITTED,
    SCORES_LIVE,
    EventDecodeError,
    LiveScore,
    ScoreEmitted,
    decode,
)
from shared.kafka import started
from shared.retry import RetryPolicy
from shared.settings import Settings

log = logging.getLogger(__name__)
CLIENT_QUEUE = 256  # updates buffered per client; a slower client loses the oldest
HEARTBEAT_SECONDS = 15.0
HUB_BATCH_MS = 50
HUB_FETCH_MIN_BYTES = 1 << 20
HUB_LOOK_BACK_SECONDS = 5.0  # at start: long enough to find every match in progress
HUB_ASSIGN_SECONDS = 10.0
ENDED_REMEMBERED = 1024
PAGE = "live.html"
OVERLAY = "overlay.html"
SCRIPT = "chart.js"


@dataclass(frozen=True)
class StreamEvent:
    kind: str  # "live", "replay", "point" or "timeline"
    match_id: str  # match id, or replay id for a replay's score
    data: str  # the event's JSON
    ended: bool = False  # the last update of a live match
    score: LiveScore | None = None  # a "live" event's update


@dataclass
class ScoreHub:
    """Latest update per live match, and one queue per connected client."""

    service: str
    latest: dict[str, StreamEvent] = field(default_factory=dict)
    timelines: dict[str, MatchTimeline] = field(default_factory=dict)
    clients: set[asyncio.Queue[StreamEvent]] = field(default_factory=set)
    # matches seen to end: a late or repeated update of one starts no second timeline
    ended: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def publish(self, event: StreamEvent) -> None:
        events = [event]
        if event.score is not None and event.match_id not in self.ended:
            events.append(self._add_point(event.score))
            if event.ended:
                self.latest.pop(event.match_id, None)
                self.timelines.pop(event.match_id, None)
                self._remember_ended(event.match_id)
            else:
                self.latest[event.match_id] = event
        for queue in self.clients:
            for each in events:
                _offer(queue, each)

    def _remember_ended(self, match_id: str) -> None:
        self.ended[match_id] = None
        while len(self.ended) > ENDED_REMEMBERED:
            self.ended.popitem(last=False)

    def _add_point(self, score: LiveScore) -> StreamEvent:
        timeline = self.timelines.setdefault(score.match_id, MatchTimeline(score.match_id))
        point, goals = timeline.add(score)
        return StreamEvent("point", score.match_id, point_json(score.match_id, point, goals))

    def subscribe(self) -> asyncio.Queue[StreamEvent]:
        queue: asyncio.Queue[StreamEvent] = asyncio.Queue(CLIENT_QUEUE)
        for match_id, event in self.latest.items():
            if timeline := self.timelines.get(match_id):
                _offer(queue, StreamEvent("timeline", match_id, timeline_json(timeline)))
            _offer(queue, event)
        self.clients.add(queue)
        metrics.STREAM_CLIENTS.labels(self.service).set(len(self.clients))
        return queue

    def unsubscribe(self, queue: asyncio.Queue[StreamEvent]) -> None:
        self.clients.discard(queue)
        metrics.STREAM_CLIENTS.labels(self.service).set(len(self.clients))


def _offer(queue: asyncio.Queue[StreamEvent], event: StreamEvent) -> None:
    """Queue ``event``; a full queue (a slow client) loses its oldest."""
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(event)


async def feed_hub(hub: ScoreHub, settings: Settings, stop: asyncio.Event) -> None:
    """Publish everything that appears on scores.live (from a few seconds back) and
    scores.emitted (from now on)."""
    consumer = await started(
        AIOKafkaConsumer,
        settings,
        "live: Kafka consumer of the score streams",
        RetryPolicy.of(settings),
        stop,
        SCORES_LIVE.name,
        SCORES_EMITTED.name,
        group_id=None,
        auto_offset_reset="latest",
        isolation_level="read_committed",  # scores.emitted is written in transactions
        # batches at most HUB_BATCH_MS apart, not a fetch per update: a screen cannot tell,
        # and the live scoring beside it in this process keeps the CPU
        fetch_min_bytes=HUB_FETCH_MIN_BYTES,
        fetch_max_wait_ms=HUB_BATCH_MS,
    )
    try:
        await _start_recent(consumer)
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            for records in batches.values():
                for record in records:
                    if event := _stream_event(record.topic, record.value):
                        hub.publish(event)
    finally:
        await consumer.stop()


async def _start_recent(consumer: AIOKafkaConsumer) -> None:
    """Move to ``HUB_LOOK_BACK_SECONDS`` back on scores.live, once the partitions are known."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HUB_ASSIGN_SECONDS
    while not consumer.assignment() and loop.time() < deadline:
        await asyncio.sleep(0.05)
    live = [tp for tp in consumer.assignment() if tp.topic == SCORES_LIVE.name]
    since = int((time.time() - HUB_LOOK_BACK_SECONDS) * 1000)
    found = await consumer.offsets_for_times({tp: since for tp in live})
    for tp, at in found.items():
        if at is not None:  # else nothing as recent: stay at the end
            consumer.seek(tp, at.offset)


def _stream_event(topic: str, raw: bytes) -> StreamEvent | None:
    try:
        if topic == SCORES_LIVE.name:
            live = decode(LiveScore, raw)
            return StreamEvent("live", live.match_id, raw.decode(), live.status == "ended", live)
        replay = decode(ScoreEmitted, raw)
        return StreamEvent("replay", replay.replay_id, raw.decode())
    except EventDecodeError as error:  # the producers validated it; log and go on
        log.warning("not streamed: %s", error)
        return None


def _static(name: str) -> str:
    return resources.files("services.live").joinpath("static", name).read_text()


def web_app(hub: ScoreHub, catalog: ReplayCatalog) -> web.Application:
    page, overlay, script = _static(PAGE), _static(OVERLAY), _static(SCRIPT)

    async def index(_: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    async def overlay_page(_: web.Request) -> web.Response:
        return web.Response(text=overlay, content_type="text/html")

    async def chart_script(_: web.Request) -> web.Response:
        return web.Response(text=script, content_type="text/javascript")

    async def latest(_: web.Request) -> web.Response:
        body = "[" + ",".join(e.data for e in hub.latest.values()) + "]"
        return web.Response(text=body, content_type="application/json")

    async def stream(request: web.Request) -> web.StreamResponse:
        match = request.query.get("match")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "Access-Control-Allow-Origin": "*",  # overlays load from file:// or OBS
            }
        )
        await response.prepare(request)
        queue = hub.subscribe()
        try:
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), HEARTBEAT_SECONDS)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if match is None or event.match_id == match:
                    await response.write(f"event: {event.kind}\ndata: {event.data}\n\n".encode())
        except ConnectionResetError:  # the browser went away
            pass
        finally:
            hub.unsubscribe(queue)
        return response

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/overlay", overlay_page)
    app.router.add_get(f"/static/{SCRIPT}", chart_script)
    app.router.add_get("/scores/latest", latest)
    app.router.add_get("/scores/stream", stream)
    replay_routes(app, catalog)
    app.on_cleanup.append(lambda _: catalog.close())
    return app


async def serve_web(hub: ScoreHub, settings: Settings) -> web.AppRunner:
    app = web_app(hub, ReplayCatalog(settings))
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, settings.live_http_host, settings.live_http_port).start()
    log.info("live page on http://%s:%d/", settings.live_http_host, settings.live_http_port)
    return runner
