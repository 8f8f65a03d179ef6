"""What both chaos modules do around their scenarios: start a stack with a batch of replays
planned per scenario, and after the last scenario check that nothing of it is left running."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from shared.settings import REPO_ROOT
from tests.chaos.replays import Replay, plan_batches
from tests.chaos.scenarios import Scenario
from tests.chaos.stack import ChaosStack, kill_all

DATA_ROOT = REPO_ROOT / ".rlimpact"


@dataclass
class Chaos:
    stack: ChaosStack = field(repr=False)
    batches: dict[str, list[Replay]] = field(repr=False)


@asynccontextmanager
async def started(stack: ChaosStack, scenarios: tuple[Scenario, ...]) -> AsyncIterator[Chaos]:
    """The stack started, with a batch of replays planned for each scenario; stopped after."""
    try:
        names = [scenario.name for scenario in scenarios]
        batches = await plan_batches(names, stack.settings, stack.data_dir / "inputs")
        await stack.start()
        yield Chaos(stack, batches)
    finally:
        kill_all(stack.stop())  # what a failed run left: test_nothing_is_left_behind says so


def assert_nothing_left(stack: ChaosStack) -> None:
    leftovers = stack.stop()
    assert not leftovers, "still running after the stack stopped:\n" + "\n".join(
        f"{pid} {cmdline}" for pid, cmdline in leftovers
    )
