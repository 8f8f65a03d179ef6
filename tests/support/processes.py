"""Tests that kill processes must not leave any behind: not even a zombie, which the init of
a container may never reap."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator

from shared import process


@contextlib.contextmanager
def reaping_orphans() -> Iterator[None]:
    """Make the test process a child subreaper for the block, so that the orphans of what the
    test starts become its children. At the end, every child that arrived during the block
    (wait for your own subprocesses first) is killed and reaped."""
    before = set(process.children(os.getpid()))
    process.become_subreaper()
    try:
        yield
    finally:
        process.become_subreaper(False)
        kill_and_reap(set(process.children(os.getpid())) - before)


def kill_and_reap(pids: set[int]) -> None:
    """SIGKILL the ``pids`` still there, and reap those that are this process's children."""
    for pid in pids:
        process.signal_quietly(pid, signal.SIGKILL)
    for pid in pids:
        if process.parent(pid) == os.getpid():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def until(condition: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    """Poll ``condition()`` until it is truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def gone(pid: int) -> bool:
    """No such process at all: not running, and not a zombie that nobody reaped."""
    return process.state(pid) is None
