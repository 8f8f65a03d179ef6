"""The parser's worker pool: a hung or crashing parse fails alone and the pool goes on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from services.parser.parse import ReplayParseError
from services.parser.workers import WorkerCrashed, WorkerPool, WorkerTimeout
from shared import process
from shared.settings import REPO_ROOT
from tests.support.processes import reaping_orphans, until


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


# A parser-like process: a worker pool whose one worker is busy (a long parse, say) when the
# process is killed. It prints the worker's pid once the worker is busy.
POOL_OWNER = """
import asyncio, os, time
from services.parser.workers import WorkerPool

async def main():
    pool = WorkerPool(1, timeout_seconds=600, recycle_after=50)
    worker = await pool.run(os.getpid)
    busy = asyncio.ensure_future(pool.run(time.sleep, 300))
    await asyncio.sleep(1)
    print(worker, flush=True)
    await busy

asyncio.run(main())
"""


def test_workers_die_when_their_parser_is_killed():
    with reaping_orphans():  # the dead worker comes back to pytest, which reaps it
        owner = subprocess.Popen(
            [sys.executable, "-c", POOL_OWNER], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
        )
        try:
            worker = int(owner.stdout.readline())  # type: ignore[union-attr]
            assert process.parent(worker) == owner.pid and process.alive(worker)
            owner.kill()
            owner.wait(timeout=10)
            until(lambda: not process.alive(worker), "the orphaned worker to die", timeout=10)
        finally:
            owner.kill()
            owner.wait(timeout=10)
