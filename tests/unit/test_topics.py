"""Partitions per topic: the defaults leave room to scale out, settings override them, and
ensure_topics knows which existing topics to grow."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.events import (
    ALL_TOPICS,
    FEATURES_READY,
    FRAMES_PARSED,
    LIVE_FRAMES,
    REPLAY_UPLOADED,
    SCORES_EMITTED,
    SCORES_LIVE,
    TRAIN_REQUESTED,
)
from shared.kafka import partitions_to_add
from shared.settings import Settings

SCALED_OUT = (REPLAY_UPLOADED, FRAMES_PARSED, FEATURES_READY, SCORES_EMITTED, LIVE_FRAMES)


@pytest.mark.parametrize("topic", [*SCALED_OUT, SCORES_LIVE], ids=lambda t: t.name)
def test_the_replay_and_live_paths_have_room_for_six_instances(topic):
    assert Settings().partitions(topic) >= 6


def test_an_override_applies_to_its_topic_only(monkeypatch):
    monkeypatch.setenv("RLIMPACT_TOPIC_PARTITIONS", '{"frames.parsed": 12, "train.requested": 2}')
    settings = Settings()
    assert settings.partitions(FRAMES_PARSED) == 12
    assert settings.partitions(TRAIN_REQUESTED) == 2
    others = [t for t in ALL_TOPICS if t not in (FRAMES_PARSED, TRAIN_REQUESTED)]
    assert all(settings.partitions(t) == t.partitions for t in others)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [('{"frames.parsd": 12}', "unknown topics"), ('{"frames.parsed": 0}', "at least 1")],
)
def test_a_wrong_override_is_refused_with_its_reason(monkeypatch, overrides, message):
    monkeypatch.setenv("RLIMPACT_TOPIC_PARTITIONS", overrides)
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_only_topics_with_fewer_partitions_than_wanted_grow():
    wanted = {"a": 6, "b": 6, "c": 2, "d": 6}
    have = {"a": 2, "b": 6, "c": 4}  # d: not described (an error): left alone
    assert partitions_to_add(wanted, have) == {"a": 6}
