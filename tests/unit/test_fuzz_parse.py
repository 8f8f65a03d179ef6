"""Fuzzing the parse stage with mutated real replays, through the service's own worker pool.

Every input must end as frames or as a clean :class:`ReplayParseError` (a decode error, a
validation rule, a timeout or a dead worker, each with a reason), and the pool must still
parse a good replay afterwards: the parser service never dies on input. Mutations are re-sealed
with valid CRCs half of the time, so damaged network data reaches the decoder instead of
stopping at the checksum. ``RLIMPACT_FUZZ_EXAMPLES`` sets how many inputs (default 40).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.parser.parse import ReplayParseError
from services.parser.service import parse_to_store
from services.parser.workers import WorkerPool
from shared.settings import ValidationRules
from shared.storage import FileBlobStore
from tests.support.replay_bytes import seal, split

EXAMPLES = int(os.environ.get("RLIMPACT_FUZZ_EXAMPLES", "40"))
RULES = ValidationRules()
outcomes: Counter[str] = Counter()


@pytest.fixture(scope="module")
def originals(good_replays) -> list[bytes]:
    smallest = sorted(good_replays, key=lambda r: r.path.stat().st_size)[:3]
    return [r.path.read_bytes() for r in smallest]


@pytest.fixture(scope="module")
def workspace() -> Iterator[FileBlobStore]:
    with tempfile.TemporaryDirectory() as tmp:
        yield FileBlobStore(Path(tmp))


@pytest.fixture(scope="module")
def pool() -> Iterator[WorkerPool]:
    with WorkerPool(2, timeout_seconds=20, recycle_after=25) as workers:
        yield workers


def _mutate(draw: st.DrawFn, data: bytes) -> bytes:
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "duplicate"]))
    at = draw(st.integers(0, max(0, len(data) - 1)))
    if kind == "flip":
        flips = draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8))
        mutable = bytearray(data)
        for i in flips:
            mutable[i] ^= draw(st.integers(1, 255))
        return bytes(mutable)
    if kind == "truncate":
        return data[:at]
    if kind == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=64)) + data[at:]
    length = draw(st.integers(1, 256))
    if kind == "delete":
        return data[:at] + data[at + length :]
    return data[:at] + data[at : at + length] * 2 + data[at + length :]


@st.composite
def mutated(draw: st.DrawFn, originals: list[bytes]) -> bytes:
    original = draw(st.sampled_from(originals))
    header, body = split(original)
    part = draw(st.sampled_from(["body", "header", "whole file"]))
    if part == "whole file":
        return _mutate(draw, original)
    if part == "header":
        header = _mutate(draw, header)
    else:
        body = _mutate(draw, body)
    if draw(st.booleans()):
        return seal(header, body)
    sealed = seal(header, body)
    return sealed[:4] + original[4:8] + sealed[8:]  # keep the stale header CRC


def _outcome(pool: WorkerPool, store: FileBlobStore, data: bytes) -> str:
    """Stored as the ingestor stores it (named by its sha256), then parsed as the service does."""
    replay_id = hashlib.sha256(data).hexdigest()
    path = store.path_for("replays", replay_id, ".replay")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    uri = store.uri_for("replays", replay_id, ".replay")
    try:
        asyncio.run(pool.run(parse_to_store, uri, replay_id, 10.0, store, RULES))
    except ReplayParseError as error:
        assert error.reason, "every rejection says why"
        return f"{type(error).__name__}: {error.reason[:40]}"
    return "parsed"


def test_mutated_replays_end_in_frames_or_a_clean_rejection(originals, pool, workspace):
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        replay = data.draw(mutated(originals))
        outcomes[_outcome(pool, workspace, replay)] += 1

    fuzz()
    print(f"fuzz outcomes: {dict(outcomes)}")
    assert sum(outcomes.values()) >= EXAMPLES
    good = originals[0]
    assert _outcome(pool, workspace, good) == "parsed", "the pool still parses"
    assert workspace.path_for("frames", hashlib.sha256(good).hexdigest(), ".npz").exists()
