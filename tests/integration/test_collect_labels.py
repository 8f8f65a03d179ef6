"""Ballchasing collector and labels import on the real stack (Kafka, Postgres, the services).

A local HTTP server answers in Ballchasing's documented JSON shapes and serves real corpus
replays. The collector runs as the CLI does, in its own process: it walks nested groups, keeps
to the budgets, honours Retry-After, survives a failing server and a kill (each run resumes,
nothing is downloaded twice once finished, no replay is recorded twice), and stores the
players' ranks as labels that resolve to player indexes once the parser service has run.
Then ``rlimpact labels import`` is checked with CSV and JSON lines, matched and not.

The test removes its replays at the end, so the pipeline test's counts are its own.
"""

from __future__ import annotations

import asyncio
import csv
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from services.ingestor.collector.labels import BcRank, rating_from_rank
from services.parser.parse import parse_replay_file
from shared import db
from shared.settings import REPO_ROOT
from tests.integration.conftest import Stack, connect_pg, wait_for
from tests.support.ballchasing_server import (
    BallchasingServer,
    ServedPlayer,
    ServedReplay,
    gaps_after,
    rank,
)

pytestmark = pytest.mark.integration

TOKEN = "collector-test-token"
BUDGET_TOKEN = "collector-budget-token"
N_REPLAYS = 6
SETTLE_TIMEOUT = 180.0
RANKS = ((14, 3), (19, 1), (9, 4))  # Diamond II div 3, Grand Champion I div 1, Gold III div 4


@dataclass(frozen=True)
class Collected:
    bc_id: str
    sha256: str
    players: tuple[ServedPlayer, ...]


@dataclass
class World:
    server: BallchasingServer
    season: list[Collected]  # group "season" and its children
    cup: list[Collected]  # group "cup": the same files again, under new Ballchasing ids


def _planted_players(path: Path, sha: str, seed: int) -> tuple[ServedPlayer, ...]:
    """The replay's own players (as the parser names them) with planted ratings: the first has
    an MMR and a rank, the last none, the others a rank."""
    players = parse_replay_file(path, sha, 10.0).players
    served = []
    for i, player in enumerate(players):
        tier, division = RANKS[(seed + i) % len(RANKS)]
        last = i == len(players) - 1
        served.append(
            ServedPlayer(
                player.name,
                player.team,
                rank=None if last else rank(tier, division),
                mmr=1000.0 + 37 * seed + i if i == 0 else None,
                steam_id=f"7656{seed}{i}",
            )
        )
    return tuple(served)


def _pick(good_replays) -> list:
    """Small replays with at least three players, none of those the pipeline test uses."""
    with_goals = sorted(
        (r for r in good_replays if (r.goals or 0) >= 1 and r.team_size),
        key=lambda r: r.path.stat().st_size,
    )
    theirs = {r.path for r in with_goals[10:30]}
    picked = []
    for row in sorted(good_replays, key=lambda r: r.path.stat().st_size):
        if row.path in theirs or (row.team_size or 0) < 2:
            continue
        names = [p.name for p in parse_replay_file(row.path, row.sha256, 10.0).players]
        if len(names) >= 3 and len(set(names)) == len(names):
            picked.append(row)
        if len(picked) == N_REPLAYS:
            return picked
    raise AssertionError("not enough small multi-player replays in the corpus")


@pytest.fixture(scope="module")
def world(good_replays) -> Iterator[World]:
    picked = _pick(good_replays)
    with BallchasingServer(
        TOKEN, page_size=2, calls_per_second=4, downloads_per_second=4
    ) as server:
        server.tokens.add(BUDGET_TOKEN)
        server.add_group("season", "Season")
        server.add_group("week-1", "Week 1", parent="season")
        server.add_group("week-1-finals", "Week 1 finals", parent="week-1")
        server.add_group("week-2", "Week 2", parent="season")
        server.add_group("cup", "Cup")
        server.add_group("budget", "Budget")
        server.add_group("budget-child", "Budget child", parent="budget")
        homes = ["season", "week-1", "week-1", "week-1-finals", "week-2", "week-2"]
        season = []
        for i, (row, group) in enumerate(zip(picked, homes, strict=True)):
            players = _planted_players(row.path, row.sha256, i)
            bc_id = f"5e{i:06d}-aaaa-4bbb-8ccc-{row.sha256[:12]}"
            server.add_replay(group, ServedReplay(bc_id, row.path, players, f"RL{i:04d}"))
            season.append(Collected(bc_id, row.sha256, players))
        server.add_replay("week-2", ServedReplay("5e-lost", picked[0].path, ()))
        server.lost_files.add("5e-lost")
        cup = []
        for i, row in enumerate(picked[:4]):
            bc_id = f"c0{i:06d}-dddd-4eee-8fff-{row.sha256[:12]}"
            server.add_replay("cup", ServedReplay(bc_id, row.path, ()))
            cup.append(Collected(bc_id, row.sha256, ()))
        for i, row in enumerate(picked[:2]):
            server.add_replay("budget", ServedReplay(f"b0{i}", row.path, ()))
        yield World(server, season, cup)


@pytest.fixture(scope="module")
async def pg(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect_pg(stack)
    yield conn
    await _settled(conn, SETTLE_TIMEOUT)
    # Leave the database as the pipeline test expects it: no replays but its own.
    await conn.execute(
        "DELETE FROM scores WHERE replay_id IN"
        " (SELECT id FROM replays WHERE source = 'ballchasing')"
    )
    await conn.execute("DELETE FROM replays WHERE source = 'ballchasing'")
    await conn.close()


async def _settled(pg: asyncpg.Connection, timeout: float) -> None:
    async def done() -> bool:
        return not await pg.fetchval(
            "SELECT count(*) FROM replays WHERE source = 'ballchasing'"
            " AND status NOT IN ('featurized', 'scored', 'failed')"
        )

    await wait_for(done, timeout, "the collected replays to be parsed and featurized")


def _env(stack: Stack, world: World, **extra: str) -> dict[str, str]:
    return {
        **stack.env,
        "RLIMPACT_BALLCHASING_BASE_URL": world.server.base_url,
        "RLIMPACT_BALLCHASING_TOKEN": TOKEN,
        "RLIMPACT_BALLCHASING_CALLS_PER_SECOND": "4",
        "RLIMPACT_BALLCHASING_DOWNLOADS_PER_SECOND": "4",
        "RLIMPACT_BALLCHASING_RETRIES": "2",
        "RLIMPACT_BALLCHASING_BACKOFF_SECONDS": "0.2",
        **extra,
    }


def _write_csv(path: Path, rows: list[list]) -> None:
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)


def _cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "services.cli", *args]


async def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI without blocking the event loop (the test's other fixtures live on it)."""
    return await asyncio.to_thread(
        subprocess.run,
        _cli_command(*args),
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


async def test_collect_walks_nested_groups_and_resumes_after_a_failing_server(
    stack: Stack, world: World, pg: asyncpg.Connection
):
    server = world.server
    env = _env(stack, world)
    server.fail_from_request = 14  # mid-run: listing done, some replays downloaded
    first = await _cli(env, "collect", "ballchasing", "season")
    assert first.returncode == 4, first.stderr
    assert "Ballchasing is unavailable" in first.stderr and "run the same command again" in (
        first.stderr
    )
    failing = [r for r in server.requests if r.reason == "failing"]
    assert len(failing) == 3  # one request, tried three times (RLIMPACT_BALLCHASING_RETRIES=2)
    done_before = {c.bc_id for c in world.season if server.downloads(c.bc_id)}
    assert 0 < len(done_before) < N_REPLAYS

    server.fail_from_request = None
    server.retry_after_next = ["2"]
    n_before = len(server.requests)
    second = await _cli(env, "collect", "ballchasing", "season")
    assert second.returncode == 1, second.stderr  # one replay's file is lost
    assert "failed 5e-lost: HTTP 404" in second.stdout
    assert "already done" in second.stdout

    # The 429 was honoured: the next request came at least Retry-After seconds later.
    ((_, gap),) = gaps_after(server.requests[n_before:], lambda r: r.status == 429)
    assert gap >= 2.0
    # The budget (4 calls/s, 4 downloads/s) kept the server from ever answering "over limit".
    assert not [r for r in server.requests if r.reason == "over limit"]
    # No listing again in the second run: the groups were listed completely in the first.
    assert not [r for r in server.requests[n_before:] if r.path.endswith(("/groups", "/replays"))]
    # Every replay downloaded exactly once over both runs; none recorded twice.
    assert {c.bc_id: server.downloads(c.bc_id) for c in world.season} == {
        c.bc_id: 1 for c in world.season
    }
    rows = await pg.fetch(
        "SELECT bc_id, group_id, status, sha256, error FROM ballchasing_replays"
        " WHERE group_id IN ('season', 'week-1', 'week-1-finals', 'week-2')"
    )
    by_id = {row["bc_id"]: row for row in rows}
    assert len(rows) == N_REPLAYS + 1
    for collected in world.season:
        assert by_id[collected.bc_id]["status"] == "ingested"
        assert by_id[collected.bc_id]["sha256"] == collected.sha256
    assert by_id["5e-lost"]["status"] == "failed" and "404" in by_id["5e-lost"]["error"]
    assert by_id[world.season[3].bc_id]["group_id"] == "week-1-finals"  # two levels down
    shas = [c.sha256 for c in world.season]
    assert await pg.fetchval("SELECT count(*) FROM replays WHERE id = ANY($1)", shas) == N_REPLAYS

    # A third run only retries the lost file (failed replays get RLIMPACT_BALLCHASING_MAX_ATTEMPTS).
    n_before = len(server.requests)
    third = await _cli(env, "collect", "ballchasing", "season")
    assert third.returncode == 1
    assert [r.path for r in server.requests[n_before:]] == ["/api/replays/5e-lost/file"]


async def test_ranks_become_labels_once_the_parser_has_run(
    stack: Stack, world: World, pg: asyncpg.Connection
):
    await _settled(pg, SETTLE_TIMEOUT)
    expected = set()
    for collected in world.season:
        for player in collected.players:
            rating = player.mmr
            if rating is None and player.rank is not None:
                rating = rating_from_rank(BcRank.model_validate(player.rank))
            if rating is not None:
                expected.add((collected.sha256, player.name, player.team, rating))
    labels = await db.player_labels(pg, source="ballchasing")
    mine = {label for label in labels if label.replay_id in {c.sha256 for c in world.season}}
    assert {(lb.replay_id, lb.player_name, lb.team, lb.skill_rating) for lb in mine} == expected
    players = {
        (row["replay_id"], row["player_index"]): (row["name"], row["team"])
        for row in await pg.fetch("SELECT * FROM replay_players")
    }
    assert all(players[(lb.replay_id, lb.player_index)] == (lb.player_name, lb.team) for lb in mine)
    status = await _cli(stack.env, "labels", "status")
    assert f"ballchasing: {len(expected)} labels, {len(expected)} matched" in status.stdout


async def test_a_killed_run_continues_and_known_content_is_not_recorded_twice(
    stack: Stack, world: World, pg: asyncpg.Connection
):
    server = world.server
    env = _env(stack, world, RLIMPACT_BALLCHASING_DOWNLOADS_PER_SECOND="1")
    replays_before = await pg.fetchval("SELECT count(*) FROM replays")
    process = subprocess.Popen(
        _cli_command("collect", "ballchasing", "cup"),
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while sum(server.downloads(c.bc_id) for c in world.cup) < 2:
        assert process.poll() is None and time.monotonic() < deadline
        await asyncio.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    rerun = await _cli(env, "collect", "ballchasing", "cup")
    assert rerun.returncode == 0, rerun.stderr
    downloads = [server.downloads(c.bc_id) for c in world.cup]
    # Only the replay in flight when the kill came may be downloaded a second time.
    assert all(n >= 1 for n in downloads) and sum(downloads) <= len(world.cup) + 1
    statuses = await pg.fetch(
        "SELECT status, sha256 FROM ballchasing_replays WHERE group_id = 'cup'"
    )
    assert [row["status"] for row in statuses] == ["ingested"] * len(world.cup)
    assert {row["sha256"] for row in statuses} == {c.sha256 for c in world.cup}
    # The files are the season's again: the pipeline knows them, nothing new is recorded.
    assert await pg.fetchval("SELECT count(*) FROM replays") == replays_before
    assert "already known" in rerun.stdout


async def test_the_hourly_budget_holds_across_runs(stack: Stack, world: World):
    server = world.server
    env = _env(
        stack,
        world,
        RLIMPACT_BALLCHASING_TOKEN=BUDGET_TOKEN,
        RLIMPACT_BALLCHASING_CALLS_PER_HOUR="3",
        RLIMPACT_BALLCHASING_DOWNLOADS_PER_HOUR="1",
    )
    first = await _cli(env, "collect", "ballchasing", "budget", "--max-wait", "2")
    assert first.returncode == 3, first.stderr
    assert "call budget (3 per hour) used up" in first.stderr
    calls = [r for r in server.by_token(BUDGET_TOKEN) if not r.is_download]
    assert len(calls) == 3 and all(r.status == 200 for r in calls)
    second = await _cli(env, "collect", "ballchasing", "budget", "--max-wait", "2")
    assert second.returncode == 3
    assert len([r for r in server.by_token(BUDGET_TOKEN) if not r.is_download]) == 3


async def test_labels_import_csv_and_jsonl(
    stack: Stack, world: World, pg: asyncpg.Connection, tmp_path: Path
):
    await _settled(pg, SETTLE_TIMEOUT)
    first, second = world.season[0], world.season[1]
    ann, bob = first.players[0], first.players[1]
    cy = second.players[-1]
    colour = {0: "blue", 1: "orange"}
    rows = [
        ["replay_filename", "player_name", "team", "skill_rating"],
        [f"{first.bc_id}.replay", ann.name.upper(), ann.team, "1500"],
        [f"{first.bc_id}.replay", bob.name, colour[bob.team], "1400.5"],
        ["nope.replay", "Ann", 0, "1000"],
        [f"{second.bc_id}.replay", "Nobody", 0, "1000"],
        [f"{second.bc_id}.replay", cy.name, "green", "1000"],
        [f"{second.bc_id}.replay", cy.name, cy.team, "lots"],
    ]
    path = tmp_path / "labels.csv"
    _write_csv(path, rows)
    result = await _cli(stack.env, "labels", "import", str(path))
    assert result.returncode == 1, result.stderr
    assert (
        "imported 2, updated 0, unchanged 0 (0 of these wait for their replay to be parsed);"
        " unmatched replay 1, unmatched player 1, invalid rows 2"
    ) in result.stdout
    assert "unmatched replay: line 4: nope.replay 'Ann' (blue): no replay known" in result.stdout
    assert "unmatched player: line 5:" in result.stdout and "no blue player named" in (
        result.stdout
    )
    assert "invalid: line 6: team 'green'" in result.stdout
    assert "invalid: line 7: skill_rating 'lots' is not a number" in result.stdout

    csv_labels = {
        (lb.replay_id, lb.player_name, lb.team, lb.skill_rating)
        for lb in await db.player_labels(pg, source="csv")
    }
    assert csv_labels == {
        (first.sha256, ann.name, ann.team, 1500.0),
        (first.sha256, bob.name, bob.team, 1400.5),
    }
    rows[1][3] = "1550"
    _write_csv(path, rows)
    again = await _cli(stack.env, "labels", "import", str(path))
    assert "imported 0, updated 1, unchanged 1" in again.stdout

    # JSON lines: Ballchasing metadata as the API returns it, with new MMRs.
    lines = []
    for collected in world.season[:2]:
        response = world.server.replay_detail(world.server.replays[collected.bc_id])
        for side in ("blue", "orange"):
            for player in response[side]["players"]:
                player["mmr"] = 2000.0
        lines.append(json.dumps(response))
    lines += [json.dumps({"id": "5e-unknown", "blue": {"players": [{"name": "x", "mmr": 1}]}})]
    lines += ["{broken"]
    jsonl = tmp_path / "export.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    result = await _cli(stack.env, "labels", "import", str(jsonl), "--source", "bc-export")
    n_players = len(world.season[0].players) + len(world.season[1].players)
    assert (
        f"imported {n_players}, updated 0, unchanged 0 (0 of these wait for their replay to be"
        " parsed); unmatched replay 1, unmatched player 0, invalid rows 1"
    ) in result.stdout
    assert "invalid: line 4: not JSON" in result.stdout
    exported = await db.player_labels(pg, source="bc-export")
    assert len(exported) == n_players and {lb.skill_rating for lb in exported} == {2000.0}
