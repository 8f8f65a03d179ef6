"""The re-drive rules of shared/recovery.py, and rebuilding each event from a real stored replay."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from services.featurizer.service import featurize_to_store
from services.parser.service import parse_to_store
from shared.events import FEATURES_READY, FRAMES_PARSED, REPLAY_UPLOADED, FramesParsed
from shared.recovery import (
    ReplayState,
    _is_hex,
    is_final,
    plan_failed,
    plan_redrive,
    rebuild_event,
)
from shared.settings import Settings, ValidationRules
from shared.storage import FileBlobStore

AFTER = 120.0


def _state(status: str, **changes: object) -> ReplayState:
    base = ReplayState(
        replay_id="ab" * 32,
        status=status,
        idle_seconds=AFTER + 1,
        scored_by_active=False,
        model_active=True,
        uri="file:///blobs/replays/ab/x.replay",
        filename="x.replay",
        size_bytes=10,
        source="watch",
    )
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize(
    ("status", "topic"),
    [
        ("received", REPLAY_UPLOADED),
        ("uploaded", REPLAY_UPLOADED),
        ("parsed", FRAMES_PARSED),
        ("featurized", FEATURES_READY),
    ],
)
def test_a_stranded_replay_is_driven_on_from_the_stage_it_reached(status, topic):
    plan = plan_redrive(_state(status), AFTER)
    assert plan.topic is topic and topic.name in plan.why


@pytest.mark.parametrize("status", ["received", "uploaded", "parsed", "featurized"])
def test_a_replay_that_moved_recently_is_left_alone(status):
    assert plan_redrive(_state(status, idle_seconds=AFTER - 1), AFTER).topic is None
    assert plan_redrive(_state(status, idle_seconds=AFTER - 1), 0).topic is not None  # --stuck


@pytest.mark.parametrize("status", ["scored", "failed"])
def test_final_replays_are_never_re_driven(status):
    state = _state(status, idle_seconds=10 * AFTER)
    assert is_final(state)
    assert plan_redrive(state, 0).topic is None


def test_a_featurized_replay_with_scores_of_the_active_model_counts_as_scored():
    """The scorer's exactly-once design relies on Kafka redelivery for those: never re-driven."""
    state = _state("featurized", scored_by_active=True)
    assert is_final(state)
    plan = plan_redrive(state, 0)
    assert plan.topic is None and "scored by the active model" in plan.why


def test_a_featurized_replay_waits_while_no_model_is_active():
    plan = plan_redrive(_state("featurized", model_active=False), 0)
    assert plan.topic is None and "no impact model is active" in plan.why


def test_a_failed_replay_is_parsed_again_by_hand_only_if_its_bytes_are_stored():
    failed = _state("failed", status_reason="worker died")
    assert plan_failed(failed, bytes_stored=True).topic is REPLAY_UPLOADED
    assert plan_failed(failed, bytes_stored=False).topic is None
    assert plan_redrive(failed, 0).topic is None  # never by the reconciler
    assert plan_failed(_state("parsed"), bytes_stored=True).topic is FRAMES_PARSED


def test_ids_are_hex_prefixes():
    assert _is_hex("ab12") and _is_hex("a" * 64)
    assert not _is_hex("") and not _is_hex("a" * 65) and not _is_hex("ab%") and not _is_hex("AB")


# ---------------------------------------------------------------- rebuilt events


@pytest.fixture(scope="module")
def stored(tmp_path_factory, good_replays) -> tuple[FileBlobStore, ReplayState, FramesParsed]:
    """The smallest corpus replay, stored, parsed and featurized as the services do it."""
    replay = min(good_replays, key=lambda r: r.path.stat().st_size)
    store = FileBlobStore(tmp_path_factory.mktemp("blobs"))
    uri = store.put_file("replays", replay.sha256, ".replay", replay.path)
    parsed = parse_to_store(uri, replay.sha256, 10.0, store, ValidationRules())
    ready = featurize_to_store(parsed, 10.0, store)
    state = ReplayState(
        replay_id=replay.sha256,
        status="featurized",
        idle_seconds=AFTER + 1,
        scored_by_active=False,
        model_active=True,
        uri=uri,
        filename=replay.path.name,
        size_bytes=replay.path.stat().st_size,
        source="watch",
        frames_uri=parsed.frames_uri,
        features_uri=ready.features_uri,
        n_frames=parsed.n_frames,
    )
    return store, state, parsed


def test_frames_parsed_is_rebuilt_as_the_parser_sent_it(stored):
    store, state, parsed = stored
    topic, event = rebuild_event(
        store, dataclasses.replace(state, status="parsed"), [], FRAMES_PARSED
    )
    assert topic is FRAMES_PARSED
    assert event.model_dump(exclude={"emitted_at"}) == parsed.model_dump(exclude={"emitted_at"})


def test_features_ready_is_rebuilt_from_the_stored_features(stored):
    store, state, parsed = stored
    topic, event = rebuild_event(store, state, parsed.players, FEATURES_READY)
    assert topic is FEATURES_READY
    assert (event.replay_id, event.features_uri) == (state.replay_id, state.features_uri)
    assert event.n_frames == parsed.n_frames and event.players == parsed.players


def test_a_stage_whose_file_is_gone_is_re_driven_from_the_stage_before(stored, tmp_path: Path):
    store, state, parsed = stored
    no_features = dataclasses.replace(state, features_uri=store.uri_for("features", "00", ".x"))
    topic, event = rebuild_event(store, no_features, parsed.players, FEATURES_READY)
    assert topic is FRAMES_PARSED and event.frames_uri == parsed.frames_uri
    nothing = dataclasses.replace(state, features_uri=None, frames_uri=None)
    topic, event = rebuild_event(store, nothing, parsed.players, FEATURES_READY)
    assert topic is REPLAY_UPLOADED
    assert (event.replay_id, event.uri, event.filename) == (
        state.replay_id,
        state.uri,
        state.filename,
    )


# ---------------------------------------------------------------- rlimpact retry


def test_retry_asks_what_to_retry():
    from services.cli import main

    with pytest.raises(SystemExit, match="name replays, or give --failed or --stuck"):
        main(["retry"])


def test_retry_with_the_stack_down_says_so():
    from services.cli import retry

    settings = Settings(pg_port=1, kafka_bootstrap="127.0.0.1:1")
    args = argparse.Namespace(replays=["ab12"], failed=False, stuck=False)
    with pytest.raises(SystemExit, match="cannot reach Postgres, Kafka or the blob store"):
        retry.cmd_retry(args, settings)
