"""The parser's worker pool: a hung or crashing parse fails alone and the pool goes on."""

from __future__ import annotations

import os
import signal
import time

import pytest

from services.parser.parse import ReplayParseError
from services.parser.workers import WorkerCrashed, WorkerPool, WorkerTimeout


def _pid() -> int:
    return os.getpid()


def _hang() -> None:
    time.sleep(600)


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _reject() -> None:
    raise ReplayParseError("not a replay")


@pytest.fixture
def restarts() -> list[int]:
    return []


@pytest.fixture
def pool(restarts: list[int]):
    with WorkerPool(
        1, timeout_seconds=3, recycle_after=3, on_restart=lambda: restarts.append(1)
    ) as p:
        yield p


async def test_a_hung_parse_times_out_and_the_pool_goes_on(pool: WorkerPool, restarts):
    before = await pool.run(_pid)
    with pytest.raises(WorkerTimeout, match="longer than 3 s"):
        await pool.run(_hang)
    after = await pool.run(_pid)
    assert after != before, "the hung worker was replaced"
    assert restarts == [1]


async def test_a_worker_that_dies_fails_only_its_replay(pool: WorkerPool, restarts):
    with pytest.raises(WorkerCrashed, match="died"):
        await pool.run(_kill_self)
    assert isinstance(await pool.run(_pid), int)
    assert restarts == [1]


async def test_parse_errors_come_back_as_they_are(pool: WorkerPool, restarts):
    with pytest.raises(ReplayParseError, match="not a replay"):
        await pool.run(_reject)
    assert restarts == []


async def test_workers_are_recycled_after_n_replays(pool: WorkerPool):
    pids = [await pool.run(_pid) for _ in range(7)]
    assert len(set(pids)) == 3, pids  # 3 + 3 + 1 tasks with recycle_after=3
