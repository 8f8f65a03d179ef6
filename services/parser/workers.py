"""Worker processes for parsing, with the isolation a native parser needs.

A replay that hangs is killed after its timeout, and one that kills its worker (a segfault,
an abort, running out of memory) fails alone; either way the worker is replaced and the other
replays go on. Workers are recycled after a number of replays, bounding any leak. Built on
``pebble``, whose process pool does per-task timeouts, unlike the standard library's.

A worker dies with the process that started it (``PR_SET_PDEATHSIG``): a parser killed with
SIGKILL leaves no worker behind to finish, orphaned, a replay nobody waits for.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from pebble import ProcessExpired, ProcessPool

from services.parser.parse import ReplayParseError
from shared.process import die_with_parent

T = TypeVar("T")


class WorkerTimeout(ReplayParseError):
    """The replay took longer than the per-replay timeout; its worker was killed."""


class WorkerCrashed(ReplayParseError):
    """The worker process died while parsing the replay."""


class WorkerPool:
    def __init__(
        self,
        workers: int,
        timeout_seconds: float,
        recycle_after: int,
        on_restart: Callable[[], None] = lambda: None,
    ) -> None:
        self.timeout_seconds = timeout_seconds
        self._on_restart = on_restart
        # spawn, not fork: the service's own process runs threads (Kafka, asyncpg).
        self._pool = ProcessPool(
            max_workers=workers,
            max_tasks=recycle_after,
            context=multiprocessing.get_context("spawn"),
            initializer=die_with_parent,
            initargs=(os.getpid(),),
        )

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """Run ``function(*args)`` in a worker; its own exceptions are re-raised here."""
        future = self._pool.schedule(function, args=args, timeout=self.timeout_seconds)
        try:
            return await asyncio.wrap_future(future)
        except FutureTimeout as error:
            self._on_restart()
            raise WorkerTimeout(
                f"parse took longer than {self.timeout_seconds:g} s; worker killed"
            ) from error
        except ProcessExpired as error:
            self._on_restart()
            raise WorkerCrashed(
                f"parser worker process died (exit code {error.exitcode})"
            ) from error

    def close(self) -> None:
        self._pool.stop()
        self._pool.join(timeout=10)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
