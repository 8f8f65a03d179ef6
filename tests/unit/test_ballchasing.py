"""The Ballchasing client against a real local HTTP server in the API's shapes, and its budget.

The collector's Postgres side (resume, no duplicates, labels) is in
tests/integration/test_collect_labels.py.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from services.ingestor.collector.client import (
    BallchasingAuthError,
    BallchasingClient,
    BallchasingError,
    BallchasingNotFound,
    BallchasingUnavailable,
    Budget,
    BudgetExhausted,
    SlidingWindow,
    retry_after_seconds,
)
from services.ingestor.collector.labels import BcReplay, labels_from_ballchasing, rating_from_rank
from shared.settings import Settings
from tests.support.ballchasing_server import (
    BallchasingServer,
    ServedPlayer,
    ServedReplay,
    gaps_after,
    rank,
)

TOKEN = "unit-test-token"


def settings_for(server: BallchasingServer, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "ballchasing_base_url": server.base_url,
        "ballchasing_backoff_seconds": 0.05,
        "ballchasing_retries": 2,
        "ballchasing_calls_per_second": 50,
        "ballchasing_downloads_per_second": 50,
        **overrides,
    }
    return Settings.model_validate(values)


@pytest.fixture
def server(standard_replay) -> Iterator[BallchasingServer]:
    with BallchasingServer(TOKEN, page_size=2, calls_per_second=50, downloads_per_second=50) as s:
        s.add_group("root", "Root")
        for i in range(5):
            s.add_group(f"child-{i}", f"Child {i}", parent="root")
        s.add_replay(
            "root",
            ServedReplay(
                "r1",
                standard_replay.path,
                (
                    ServedPlayer("Ann", 0, rank=rank(14, 3), mmr=1203.0, steam_id="1"),
                    ServedPlayer("Bob", 0, rank=rank(14, 3)),
                    ServedPlayer("Cy", 1, rank=rank(0, 0) | {"tier": 0}),
                    ServedPlayer("Di", 1),
                ),
            ),
        )
        yield s


# ---------------------------------------------------------------- budget, pure


def test_sliding_window_allows_limit_per_window_then_says_how_long_to_wait():
    window = SlidingWindow(limit=2, seconds=1.0)
    assert window.delay(0.0) == 0
    window.record(0.0)
    window.record(0.3)
    assert window.delay(0.5) == pytest.approx(0.5)  # the first leaves the window at 1.0
    assert window.delay(1.0) == 0
    window.record(1.0)
    assert window.delay(1.1) == pytest.approx(0.2)  # now 0.3 must leave


def test_budget_is_the_stricter_of_per_second_and_per_hour_and_counts_earlier_runs():
    budget = Budget.of("call", per_second=2, per_hour=3)
    budget.seed(now=10_000.0, ages=[100.0, 50.0])  # two requests in an earlier run
    assert budget.delay(10_000.0) == 0
    budget.record(10_000.0)
    # Three in the hour: the next one waits until the oldest (age 100 s) is an hour old.
    assert budget.delay(10_000.5) == pytest.approx(3600 - 100 - 0.5)


def test_retry_after_in_seconds_or_as_an_http_date():
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert retry_after_seconds("7") == 7
    assert retry_after_seconds(" 0.5 ") == 0.5
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=30)), now) == 30
    assert retry_after_seconds(format_datetime(now - timedelta(seconds=30)), now) == 0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


def test_next_urls_must_stay_under_the_base_url(server: BallchasingServer):
    client = BallchasingClient(settings_for(server), TOKEN)
    assert client.url("/replays") == f"{server.base_url}/replays"
    assert client.url(f"{server.base_url}/replays?after=x") == f"{server.base_url}/replays?after=x"
    with pytest.raises(BallchasingError, match="refusing"):
        client.url("https://elsewhere.example/api/replays?after=x")


# ---------------------------------------------------------------- against the server


async def test_listing_follows_next_pages(server: BallchasingServer):
    async with BallchasingClient(settings_for(server), TOKEN) as client:
        pages = [page async for page in client.pages("/groups", {"group": "root", "count": 200})]
    assert [len(page) for page in pages] == [2, 2, 1]
    assert [g["id"] for page in pages for g in page] == [f"child-{i}" for i in range(5)]
    assert all(r.token == TOKEN for r in server.requests)  # the documented auth header


async def test_429_retry_after_is_honoured(server: BallchasingServer):
    server.retry_after_next = ["1"]
    async with BallchasingClient(settings_for(server), TOKEN) as client:
        group = await client.get_json("/groups/root")
    assert group["name"] == "Root"
    assert [r.status for r in server.requests] == [429, 200]
    ((_, gap),) = gaps_after(server.requests, lambda r: r.status == 429)
    assert gap >= 1.0


async def test_5xx_is_retried_with_backoff_then_given_up(server: BallchasingServer):
    server.fail_next = 2
    async with BallchasingClient(settings_for(server), TOKEN) as client:
        assert (await client.get_json("/groups/root"))["id"] == "root"
        server.fail_next = 3  # retries=2: three tries in all
        with pytest.raises(BallchasingUnavailable, match="HTTP 503"):
            await client.get_json("/groups/root")
    assert [r.status for r in server.requests] == [503, 503, 200, 503, 503, 503]
    gaps = [gap for _, gap in gaps_after(server.requests[:3], lambda r: r.status == 503)]
    assert gaps[1] >= 2 * gaps[0] * 0.8 and gaps[0] >= 0.05  # exponential backoff


async def test_a_server_that_is_gone_is_unavailable(tmp_path: Path):
    with BallchasingServer(TOKEN) as gone:
        settings = settings_for(gone)
    async with BallchasingClient(settings, TOKEN) as client:
        with pytest.raises(BallchasingUnavailable, match="ConnectError"):
            await client.get_json("/groups/root")


async def test_wrong_token_and_unknown_ids_are_clear_errors(server: BallchasingServer):
    async with BallchasingClient(settings_for(server), "wrong") as client:
        with pytest.raises(BallchasingAuthError, match="401"):
            await client.get_json("/groups/root")
    async with BallchasingClient(settings_for(server), TOKEN) as client:
        with pytest.raises(BallchasingNotFound, match="404"):
            await client.get_json("/groups/nope")
    with pytest.raises(BallchasingAuthError, match="no Ballchasing API token"):
        BallchasingClient(settings_for(server), "")


async def test_download_streams_the_real_file_and_enforces_the_size_limit(
    server: BallchasingServer, standard_replay, tmp_path: Path
):
    size = standard_replay.path.stat().st_size
    async with BallchasingClient(settings_for(server), TOKEN) as client:
        download = await client.download("r1", tmp_path / "r1.replay", max_bytes=size)
        assert download.sha256 == standard_replay.sha256 and download.size == size
        assert hashlib.sha256((tmp_path / "r1.replay").read_bytes()).hexdigest() == download.sha256
        with pytest.raises(BallchasingError, match="over the limit"):
            await client.download("r1", tmp_path / "big.replay", max_bytes=size - 1)
        server.lost_files.add("r1")
        with pytest.raises(BallchasingNotFound):
            await client.download("r1", tmp_path / "lost.replay", max_bytes=size)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r1.replay"]  # no partial files


async def test_per_second_budget_keeps_under_the_servers_limit(server: BallchasingServer):
    server.limits[False] = (2, 500)
    start = time.monotonic()
    async with BallchasingClient(settings_for(server, ballchasing_calls_per_second=2), TOKEN) as c:
        for _ in range(5):
            await c.get_json("/groups/root")
    assert [r.status for r in server.requests] == [200] * 5  # the server never said 429
    assert time.monotonic() - start >= 2.0  # pairs at 0, 1, 2 s


async def test_hourly_budget_stops_instead_of_waiting_past_max_wait(server: BallchasingServer):
    settings = settings_for(server, ballchasing_calls_per_hour=2)
    async with BallchasingClient(settings, TOKEN, max_wait=5) as client:
        client.seed("call", [10.0])  # one request ten seconds ago, in an earlier run
        await client.get_json("/groups/root")
        with pytest.raises(BudgetExhausted, match="per hour") as stopped:
            await client.get_json("/groups/root")
    assert len(server.requests) == 1
    assert stopped.value.wait_seconds == pytest.approx(3590, abs=2)


async def test_ranks_and_mmr_from_the_replay_metadata_become_labels(server: BallchasingServer):
    async with BallchasingClient(settings_for(server), TOKEN) as client:
        metadata = await client.get_json("/replays/r1")
    rows, unrated = labels_from_ballchasing(BcReplay.model_validate(metadata))
    ratings = {(row.player_name, row.team): row.skill_rating for row in rows}
    diamond_2_div_3 = rating_from_rank(BcReplay.model_validate(metadata).blue.players[1].rank)
    assert ratings == {("Ann", 0): 1203.0, ("Bob", 0): diamond_2_div_3}  # MMR wins over rank
    assert unrated == 2  # unranked, and no rank at all
    assert rows[0].platform_id == "steam:1" and rows[0].rank.name == "Diamond II Division 3"
