"""Waiting between attempts: capped exponential delays with jitter, for reconnecting (bridge) and
restarting (supervisor), and a sleep that a service's stop cuts short."""

from __future__ import annotations

import asyncio
import contextlib
import random


async def sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``stop`` is set meanwhile (a stopping service does not wait
    out its poll interval)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


class Backoff:
    """Delays of ``initial``, doubling, up to ``maximum`` seconds, each jittered down to half.

    The jitter keeps many clients (or restarted processes) from retrying in step.
    """

    def __init__(self, maximum: float, initial: float = 0.5) -> None:
        self.initial, self.maximum, self.attempt = initial, maximum, 0

    def next_delay(self) -> float:
        delay = min(self.maximum, self.initial * 2**self.attempt)
        self.attempt += 1
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.attempt = 0
