"""Every service's /metrics during the integration run: the key series exist and move; and
Debian's Prometheus, scraping every instance of every service, has every Grafana panel's series
and evaluates every alert rule.

Runs after the other integration tests (tests/integration/conftest.py orders it last), then
drives the pipeline and a live match once more itself, scraping every service before, during
and after, so it also stands alone.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlparse

import aiohttp
import asyncpg
import pytest

from services.cli.supervisor import Instance
from shared.events import (
    FEATURES_READY,
    FRAMES_PARSED,
    LIVE_FRAMES,
    REPLAY_UPLOADED,
    TRAIN_REQUESTED,
)
from shared.settings import REPO_ROOT, SERVICE_NAMES
from tests.integration.conftest import Stack, wait_for
from tests.support.prometheus import (
    PrometheusAPI,
    Sample,
    alert_rules,
    dashboard_queries,
    matching,
    one_instance_each,
    scrape,
    total,
    write_scrape_targets,
)

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
    stack: Stack, prometheus: PrometheusAPI, good_replays, bad_replays
):
    """(Prometheus scrapes meanwhile, for the tests below.)"""

    async def all_answer() -> dict[str, list[Sample]] | None:
        try:
            return scrape_all(stack)
        except OSError:
            return None

    before = await wait_for(all_answer, 120, "every service to serve /metrics")
    # Prometheus has found and scraped every target before the traffic: the panels' rates
    # need samples from before it as well as after.
    await wait_for(lambda: _all_scraped(prometheus), 60, "Prometheus to scrape every target")
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
        # The trainer takes the request in (its series move) but may find too few Soccar
        # replays among two; the scorer already scores with the shipped model.
        train = stack.cli("train", "--promote", "never")
        assert train.returncode == 0, train.stderr
    await wait_for(
        lambda: _moved(stack, "scorer", "rlimpact_events_in_total", before, 2),
        PIPELINE_TIMEOUT,
        "the scorer to take in the two replays",
    )
    # A training run (the shipped recipe) takes a while; its processing time counts when done.
    await wait_for(
        lambda: _processed(stack, "trainer"), PIPELINE_TIMEOUT, "the trainer to finish a run"
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
        async with _score_stream_client(stack):
            await wait_for(
                lambda: _moved(stack, "live", "rlimpact_live_latency_seconds_count", before, 30),
                120,
                "live scores",
            )
            during = scrape_all(stack)
    finally:
        simulator.terminate()
        simulator.wait(timeout=20)
    await _plugin_match_ended_twice(stack)
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
        assert len(lag) == stack.settings.partitions(topic), f"{name}: lag of {len(lag)} partitions"
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
    assert total(during["live"], "rlimpact_stream_clients") >= 1
    skipped = matching(after["bridge"], "rlimpact_live_frames_skipped_total", reason="match_ended")
    assert total(skipped, "rlimpact_live_frames_skipped_total") >= 1
    assert total(after["bridge"], "rlimpact_bridge_feed_connected") == 0
    for name in SERVICE_NAMES:
        assert stack.processes[name].poll() is None, f"{name} died:\n{stack.log(name)[-3000:]}"
    await assert_every_dashboard_panel_query_returns_series(prometheus)


async def _all_scraped(prometheus: PrometheusAPI) -> bool:
    targets = prometheus.active_targets()
    return bool(targets) and all(t["health"] == "up" for t in targets)


async def assert_every_dashboard_panel_query_returns_series(prometheus: PrometheusAPI) -> None:
    """Every Grafana panel's query has a value: called right after the traffic, within the
    panels' rate windows (1 to 5 minutes)."""
    queries = dashboard_queries()
    deadline = time.monotonic() + 30
    while True:
        empty = [q for q in queries if not _has_a_value(prometheus.query(q.expr))]
        if not empty or time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
    assert not empty, "panels with no series:\n" + "\n".join(
        f"  {q.panel} [{q.ref_id}]: {q.expr}" for q in empty
    )


@asynccontextmanager
async def _score_stream_client(stack: Stack) -> AsyncIterator[None]:
    """An overlay on the live page's score stream (the stream-clients gauge), for a while."""
    url = f"http://127.0.0.1:{stack.settings.live_http_port}/scores/stream"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        yield


async def _plugin_match_ended_twice(stack: Stack) -> None:
    """A custom plugin ends a match twice: the bridge skips the second message."""
    url = f"ws://127.0.0.1:{stack.settings.bridge_plugin_port}/plugin"
    headers = {"Authorization": f"Bearer {stack.env['RLIMPACT_BRIDGE_PLUGIN_TOKEN']}"}
    ended = json.dumps({"type": "match_ended", "match_id": f"metrics-{os.getpid()}"})
    series = "rlimpact_live_frames_skipped_total"
    before = {"bridge": scrape(stack.settings.metrics_port("bridge"))}
    async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=headers) as ws:
        await ws.send_str(ended)
        await ws.send_str(ended)
    await wait_for(
        lambda: _moved(stack, "bridge", series, before, 1, reason="match_ended"),
        30,
        "the bridge to skip the second match_ended",
    )


async def _processed(stack: Stack, service: str) -> bool:
    samples = scrape(stack.settings.metrics_port(service))
    return total(samples, "rlimpact_processing_seconds_count", service=service) > 0


async def _moved(
    stack: Stack,
    service: str,
    series: str,
    before: dict[str, list[Sample]],
    by: float,
    **labels: str,
) -> bool:
    now = scrape(stack.settings.metrics_port(service))
    return total(now, series, **labels) - total(before[service], series, **labels) >= by


def _has_a_value(result: list[dict]) -> bool:
    return any(not math.isnan(float(sample["value"][1])) for sample in result)


async def test_prometheus_scrapes_every_instance_of_every_service(
    stack: Stack, prometheus: PrometheusAPI
):
    groups = json.loads((stack.data_dir / "run" / "prometheus-targets.json").read_text())
    expected = {(target, g["labels"]["service"]) for g in groups for target in g["targets"]}
    assert {service for _, service in expected} == set(SERVICE_NAMES)

    await wait_for(lambda: _all_scraped(prometheus), 30, "every target scraped")
    up = prometheus.query('up{job="rlimpact"}')
    assert {(s["metric"]["instance"], s["metric"]["service"]) for s in up} == expected
    assert all(s["value"][1] == "1" for s in up)
    # Each instance's own series keep the service label it exports (honor_labels).
    for sample in prometheus.query("rlimpact_up"):
        assert (sample["metric"]["instance"], sample["metric"]["service"]) in expected


async def test_prometheus_evaluates_every_alert_rule_and_none_fires(prometheus: PrometheusAPI):
    async def all_evaluated() -> list[dict] | None:
        rules = prometheus.rules()
        return rules if all(rule["health"] == "ok" for rule in rules) else None

    rules = await wait_for(all_evaluated, 30, "every alert rule evaluated")
    assert {rule["name"] for rule in rules} == {rule["alert"] for rule in alert_rules()}
    firing = [(rule["name"], rule["alerts"]) for rule in rules if rule["state"] == "firing"]
    assert not firing, firing


async def test_a_second_instance_is_scraped_and_takes_its_share_of_the_partitions(
    stack: Stack, prometheus: PrometheusAPI
):
    """A second parser (instance 1, its own metrics port) joins: Prometheus finds it in
    the targets file, and the two instances' lag series cover each partition exactly once (the
    first drops the series of the partitions it gave up)."""
    env = {**stack.env, "RLIMPACT_INSTANCE": "1", "RLIMPACT_PARSER_WORKERS": "1"}
    parser = subprocess.Popen(
        [sys.executable, "-m", "services.parser"],
        env=env,
        cwd=REPO_ROOT,
        stdout=(stack.data_dir / "logs" / "parser-1.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    write_scrape_targets(stack.settings, [*one_instance_each(), Instance("parser", 1)])
    lag = f'rlimpact_consumer_lag{{service="parser", topic="{REPLAY_UPLOADED.name}"}}'
    partitions = stack.settings.partitions(REPLAY_UPLOADED)

    async def shared_out() -> bool:
        series = prometheus.query(lag)
        instances = {s["metric"]["replica"] for s in series}
        held = [s["metric"]["partition"] for s in series]
        return instances == {"0", "1"} and sorted(held) == sorted(map(str, range(partitions)))

    try:
        await wait_for(shared_out, 120, "both parsers' lag series, one per partition")
        up = prometheus.query('up{service="parser"}')
        assert {(s["metric"]["replica"], s["value"][1]) for s in up} == {
            ("0", "1"),
            ("1", "1"),
        }
    finally:
        parser.terminate()
        parser.wait(timeout=30)
        write_scrape_targets(stack.settings, one_instance_each())
    assert stack.processes["parser"].poll() is None
