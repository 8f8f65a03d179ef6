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

import pytest

from tests.chaos.harness import DATA_ROOT, Chaos, assert_nothing_left, started
from tests.chaos.scenarios import SCENARIOS, Scenario, run_scenario
from tests.chaos.stack import ChaosStack
from tests.integration.conftest import PORT_OFFSET

pytestmark = pytest.mark.chaos


@pytest.fixture(scope="module")
async def chaos() -> AsyncIterator[Chaos]:
    async with started(ChaosStack.fresh(DATA_ROOT / f"chaos-{PORT_OFFSET}"), SCENARIOS) as chaos:
        yield chaos


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda scenario: scenario.name)
async def test_every_replay_ends_once_despite(chaos: Chaos, scenario: Scenario) -> None:
    outcome = await run_scenario(chaos.stack, scenario, chaos.batches[scenario.name])
    assert outcome.ok, outcome.describe()


async def test_nothing_is_left_behind(chaos: Chaos) -> None:
    assert_nothing_left(chaos.stack)
