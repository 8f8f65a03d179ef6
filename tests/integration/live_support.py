"""What the live tests (``test_live.py``, ``test_live_faults.py``) share: the live topics as
seen during the tests, the SOS simulator, waits for a new match and for its final score, and
frames as a custom plugin sends them. Their fixtures (``live``, ``parsed``) are in
``conftest.py``."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from shared.events import (
    EVENTS_INVALID,
    LIVE_FRAMES,
    SCORES_LIVE,
    InvalidEvent,
    LiveFrame,
    LiveScore,
)
from shared.frames import PLAYER_FIELD, ParsedReplay
from shared.kafka import ensure_topics
from shared.settings import REPO_ROOT
from tests.integration.conftest import Stack, events_on, wait_for
from tests.support.prometheus import matching, scrape

# a match's first frame, received at most this long before new_match looks for it
MATCH_START_MARGIN = timedelta(seconds=1)

FPS = 30
MATCH_TIMEOUT = 240.0


@dataclass
class LiveTopics:
    """Everything on live.frames, scores.live and events.invalid during the tests."""

    frames: list[LiveFrame]
    scores: list[LiveScore]
    invalid: list[InvalidEvent]

    def frames_of(self, match_id: str) -> list[LiveFrame]:
        return [f for f in self.frames if f.match_id == match_id]

    def scores_of(self, match_id: str) -> list[LiveScore]:
        return [s for s in self.scores if s.match_id == match_id]

    def match_ids(self) -> set[str]:
        return {f.match_id for f in self.frames}


@asynccontextmanager
async def live_topics(stack: Stack) -> AsyncIterator[LiveTopics]:
    """The live topics as they fill, once the live service is ready (the ``live`` fixture)."""
    await ensure_topics(stack.settings)
    async with (
        events_on(stack, LIVE_FRAMES, LiveFrame) as frames,
        events_on(stack, SCORES_LIVE, LiveScore) as scores,
        events_on(stack, EVENTS_INVALID, InvalidEvent) as invalid,
    ):
        await live_service_ready(stack)
        yield LiveTopics(frames, scores, invalid)


async def live_service_ready(stack: Stack) -> None:
    """The live service consumes every partition of live.frames (it starts at their end)."""

    async def ready() -> bool:
        try:
            samples = scrape(stack.settings.metrics_port("live"))
        except OSError:
            return False
        lag = matching(samples, "rlimpact_consumer_lag", service="live", topic=LIVE_FRAMES.name)
        return len(lag) == stack.settings.partitions(LIVE_FRAMES)

    await wait_for(ready, 120, "the live service to be assigned live.frames")
    port = stack.settings.metrics_port("live")
    model = matching(scrape(port), "rlimpact_active_model_id", service="live")
    assert model, f"the live service has no usable model:\n{stack.log('live')[-2000:]}"


def sos_port(stack: Stack) -> int:
    port = urlparse(stack.env["RLIMPACT_BRIDGE_SOS_URLS"]).port
    assert port is not None
    return port


@contextmanager
def simulator(stack: Stack, replay: Path, *options: str) -> Iterator[subprocess.Popen[str]]:
    """``rlimpact simulate`` on the port the bridge follows, stopped on exit."""
    port = sos_port(stack)
    command = [sys.executable, "-m", "services.cli", "simulate", str(replay), "--port", str(port)]
    process = subprocess.Popen(
        [*command, *options],
        env=stack.env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


async def new_match(live: LiveTopics, before: set[str], source: str = "sos") -> str:
    """The match that starts on live.frames now: not in ``before``, and received from now on
    (``before`` alone is not enough: the lists fill from the start of the topics, and while
    they still catch up with earlier tests' matches, one of those would pass for new)."""
    since = datetime.now(UTC) - MATCH_START_MARGIN

    async def appeared() -> str | None:
        first: dict[str, datetime] = {}
        for f in live.frames:
            if f.source == source and f.match_id not in before:
                first.setdefault(f.match_id, f.received_at)
        new = [match_id for match_id, at in first.items() if at >= since]
        return new[0] if new else None

    return await wait_for(appeared, 90, f"a new match on live.frames from {source}")


async def final_score(live: LiveTopics, match_id: str) -> LiveScore:
    async def final() -> LiveScore | None:
        ended = [s for s in live.scores_of(match_id) if s.status == "ended"]
        return ended[-1] if ended else None

    return await wait_for(final, MATCH_TIMEOUT, f"the final scores.live of {match_id}")


def plugin_frame(
    parsed: ParsedReplay, match_id: str, i: int, touches: np.ndarray | None = None
) -> dict[str, object]:
    """Frame ``i`` as a custom plugin sends it; ``touches`` [T, P]: each player's touch
    counter (none sent without)."""
    f = PLAYER_FIELD
    fields = ("x", "y", "z", "roll", "pitch", "yaw", "vx", "vy", "vz", "boost")
    t = float(parsed.time[i])
    return {
        "type": "frame",
        "match_id": match_id,
        "time": t,
        "seconds_remaining": float(parsed.seconds_remaining[i]),
        "blue_goals": sum(g.team == 0 and g.time <= t for g in parsed.goals),
        "orange_goals": sum(g.team == 1 and g.time <= t for g in parsed.goals),
        "ball": dict(
            zip(("x", "y", "z", "vx", "vy", "vz"), map(float, parsed.ball[i]), strict=True)
        ),
        "players": [
            {
                "id": f"player-{p.index}",
                "name": p.name,
                "team": p.team,
                **{k: float(parsed.cars[i, p.index, f[k]]) for k in fields},
                "jumping": bool(parsed.cars[i, p.index, f["jumping"]]),
                "demolished": bool(parsed.cars[i, p.index, f["demolished"]]),
                **({"touches": int(touches[i, p.index])} if touches is not None else {}),
            }
            for p in parsed.players
        ],
    }
