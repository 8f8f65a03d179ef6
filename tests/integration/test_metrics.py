"""Every service's /metrics during the integration run: the key series exist and move.

Runs after the other integration tests (tests/integration/conftest.py orders it last), then
drives the pipeline and a live match once more itself, scraping every service before, during
and after, so it also stands alone.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from urllib.parse import urlparse

import asyncpg
import pytest

from shared.events import (
    FEATURES_READY,
    FRAMES_PARSED,
    LIVE_FRAMES,
    REPLAY_UPLOADED,
    TRAIN_REQUESTED,
)
from shared.settings import REPO_ROOT, SERVICE_NAMES
from tests.integration.conftest import Stack, wait_for
from tests.support.prometheus import Sample, matching, scrape, total

pytestmark = pytest.mark.integration

# The topic each consuming service reads (the consumer-lag gauge has one series per partition).
INPUT_TOPICS = {
    "parser": REPLAY_UPLOADED,
    "featurizer": FRAMES_PARSED,
    "trainer": TRAIN_REQUESTED,
    "scorer": FEATURES_READY,
    "live": LIVE_FRAMES,
}
PIPELINE_TIMEOUT = 300.0


def scrape_all(stack: Stack) -> dict[str, list[Sample]]:
    return {name: scrape(stack.settings.metrics_port(name)) for name in SERVICE_NAMES}


async def _active_model(stack: Stack) -> int | None:
    conn = await asyncpg.connect(stack.settings.pg_dsn)
    try:
        return await conn.fetchval("SELECT id FROM models WHERE status = 'active'")
    finally:
        await conn.close()


async def test_every_service_exports_the_key_series_and_they_move(
    stack: Stack, good_replays, bad_replays
):
    async def all_answer() -> dict[str, list[Sample]] | None:
        try:
            return scrape_all(stack)
        except OSError:
            return None

    before = await wait_for(all_answer, 120, "every service to serve /metrics")
    for name, samples in before.items():
        assert total(samples, "rlimpact_up", service=name) == 1.0, f"{name} is not up"
        assert matching(samples, "rlimpact_worker_restarts_total", service=name), name

    # The pipeline: two replays and a broken file through ingestor, parser, featurizer, scorer.
    inbox = stack.settings.inbox_dir
    for replay in sorted(good_replays, key=lambda r: r.path.stat().st_size)[:2]:
        shutil.copy(replay.path, inbox / f"metrics-{replay.path.name}")
    # A broken file no other test dropped (new bytes, so not a duplicate): the parser rejects it.
    broken = bad_replays[0].path.read_bytes() + os.urandom(16)
    (inbox / "metrics-broken.replay").write_bytes(broken)
    # The scorer promotes the shipped model on a fresh stack by itself; the trainer trains only
    # when asked (test_pipeline.py does, when it runs before).
    await wait_for(lambda: _active_model(stack), PIPELINE_TIMEOUT, "an active model")
    if total(before["trainer"], "rlimpact_events_in_total") == 0:
        await wait_for(
            lambda: _moved(stack, "featurizer", "rlimpact_events_out_total", before, 2),
            PIPELINE_TIMEOUT,
            "two replays featurized",
        )
        train = stack.cli("train", "--promote", "never")
        assert train.returncode == 0, train.stderr
    await wait_for(
        lambda: _moved(stack, "scorer", "rlimpact_events_in_total", before, 2),
        PIPELINE_TIMEOUT,
        "the scorer to take in the two replays",
    )

    # A live match, scraped while it plays.
    url = urlparse(stack.env["RLIMPACT_BRIDGE_SOS_URLS"])
    replay = next(r for r in good_replays if r.team_size == 2)
    command = [sys.executable, "-m", "services.cli", "simulate", str(replay.path)]
    simulator = subprocess.Popen(
        [*command, "--port", str(url.port), "--speed", "2", "--max-seconds", "40"],
        env=stack.env,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
    )
    try:
        await wait_for(
            lambda: _moved(stack, "live", "rlimpact_live_latency_seconds_count", before, 30),
            120,
            "live scores",
        )
        during = scrape_all(stack)
    finally:
        simulator.terminate()
        simulator.wait(timeout=20)
    await asyncio.sleep(1)
    after = scrape_all(stack)

    moved = {
        "ingestor": ("rlimpact_events_out_total", {"topic": REPLAY_UPLOADED.name}),
        "parser": ("rlimpact_events_in_total", {"topic": REPLAY_UPLOADED.name}),
        "featurizer": ("rlimpact_events_in_total", {"topic": FRAMES_PARSED.name}),
        "scorer": ("rlimpact_events_in_total", {"topic": FEATURES_READY.name}),
        "bridge": ("rlimpact_events_out_total", {"topic": LIVE_FRAMES.name}),
        "live": ("rlimpact_events_out_total", {"topic": "scores.live"}),
    }
    for name, (series, labels) in moved.items():
        grew = total(after[name], series, **labels) - total(before[name], series, **labels)
        assert grew > 0, f"{name}: {series}{labels} did not move"
    assert total(after["trainer"], "rlimpact_events_in_total") > 0, "the trainer never trained"

    # Processing time and consumer lag, per consuming service and partition.
    for name, topic in INPUT_TOPICS.items():
        lag = matching(after[name], "rlimpact_consumer_lag", service=name, topic=topic.name)
        assert len(lag) == topic.partitions, f"{name}: lag of {len(lag)} partitions"
        processed = total(after[name], "rlimpact_processing_seconds_count", service=name)
        assert processed > 0, f"{name}: no processing time recorded"
    for name in ("parser", "featurizer", "scorer", "live"):
        grew = total(after[name], "rlimpact_processing_seconds_count") - total(
            before[name], "rlimpact_processing_seconds_count"
        )
        assert grew > 0, f"{name}: processing histogram did not move"

    # Errors by reason: the broken file.
    errors = total(after["parser"], "rlimpact_errors_total") - total(
        before["parser"], "rlimpact_errors_total"
    )
    assert errors >= 1
    assert all(s.labels["reason"] for s in matching(after["parser"], "rlimpact_errors_total"))

    # The model in use; the live match while it played; the bridge's feed.
    assert total(after["scorer"], "rlimpact_active_model_id") > 0
    assert matching(after["live"], "rlimpact_active_model_id", service="live")
    assert total(during["live"], "rlimpact_live_matches") >= 1
    assert total(during["bridge"], "rlimpact_bridge_feed_connected") == 1
    assert total(after["bridge"], "rlimpact_bridge_feed_connected") == 0
    for name in SERVICE_NAMES:
        assert stack.processes[name].poll() is None, f"{name} died:\n{stack.log(name)[-3000:]}"


async def _moved(
    stack: Stack, service: str, series: str, before: dict[str, list[Sample]], by: float
) -> bool:
    now = scrape(stack.settings.metrics_port(service))
    return total(now, series) - total(before[service], series) >= by
