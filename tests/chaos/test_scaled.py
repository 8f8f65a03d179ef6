"""Scale-out under faults: two instances of the parser, the featurizer and the scorer, blobs in
an S3 bucket (MinIO) instead of a shared folder, and one instance of each stage killed with
``kill -9`` mid-stream: every parseable replay still scored exactly once per model, every
unparseable one failed, none stranded, every instance up again. The stack is its own (a
fresh data dir), started after the one of ``test_chaos.py`` has stopped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.chaos.harness import DATA_ROOT, Chaos, assert_nothing_left, started
from tests.chaos.scenarios import BLOB_BUCKET, SCALE, SCALED, run_scenario
from tests.chaos.stack import ChaosStack
from tests.integration.conftest import PORT_OFFSET

pytestmark = pytest.mark.chaos


@pytest.fixture(scope="module")
async def scaled() -> AsyncIterator[Chaos]:
    stack = ChaosStack.fresh(
        DATA_ROOT / f"chaos-scaled-{PORT_OFFSET}", scale=SCALE, blob_bucket=BLOB_BUCKET
    )
    async with started(stack, (SCALED,)) as chaos:
        yield chaos


async def test_every_replay_ends_once_with_one_instance_of_each_stage_killed(
    scaled: Chaos,
) -> None:
    outcome = await run_scenario(scaled.stack, SCALED, scaled.batches[SCALED.name])
    assert outcome.ok, outcome.describe()
    assert outcome.error is None and outcome.fault.count("kill -9") == 3, outcome.fault


async def test_nothing_is_left_behind(scaled: Chaos) -> None:
    assert_nothing_left(scaled.stack)
