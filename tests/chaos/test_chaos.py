"""The chaos suite: a fresh stack under its supervisor, one fault per scenario with 50 replays
in flight, and after each: every parseable replay scored exactly once per model (Postgres and
committed ``scores.emitted`` events), every unparseable one failed with its reason, none
stranded, every service up. At the end the stack is stopped and no process of it may remain.

Not part of the default run (``-m "not chaos"`` in pyproject.toml): ``pytest -m chaos
tests/chaos``, a step of its own in ``deploy/test.sh``. The scenarios are in
``tests/chaos/scenarios.py``, shared with ``bench/chaos.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from shared.settings import REPO_ROOT
from tests.chaos.replays import Replay, plan_batches
from tests.chaos.scenarios import SCENARIOS, Scenario, run_scenario
from tests.chaos.stack import ChaosStack, kill_all
from tests.integration.conftest import PORT_OFFSET

pytestmark = pytest.mark.chaos


@dataclass
class Chaos:
    stack: ChaosStack = field(repr=False)
    batches: dict[str, list[Replay]] = field(repr=False)


@pytest.fixture(scope="module")
async def chaos() -> AsyncIterator[Chaos]:
    stack = ChaosStack.fresh(REPO_ROOT / ".rlimpact" / f"chaos-{PORT_OFFSET}")
    try:
        names = [scenario.name for scenario in SCENARIOS]
        batches = await plan_batches(names, stack.settings, stack.data_dir / "inputs")
        await stack.start()
        yield Chaos(stack, batches)
    finally:
        kill_all(stack.stop())  # what a failed run left: test_nothing_is_left_behind says so


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda scenario: scenario.name)
async def test_every_replay_ends_once_despite(chaos: Chaos, scenario: Scenario) -> None:
    outcome = await run_scenario(chaos.stack, scenario, chaos.batches[scenario.name])
    assert outcome.ok, outcome.describe()


async def test_nothing_is_left_behind(chaos: Chaos) -> None:
    leftovers = chaos.stack.stop()
    assert not leftovers, "still running after the stack stopped:\n" + "\n".join(
        f"{pid} {cmdline}" for pid, cmdline in leftovers
    )
