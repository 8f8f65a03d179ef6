from __future__ import annotations

import pytest

from shared.events import (
    ALL_TOPICS,
    EventDecodeError,
    FramesParsed,
    GoalInfo,
    PlayerInfo,
    ReplayUploaded,
    decode,
    encode,
)

REPLAY_ID = "ab" * 32


def test_round_trip_and_partition_key():
    event = FramesParsed(
        replay_id=REPLAY_ID,
        frames_uri="file:///x.npz",
        n_frames=10,
        fps=10.0,
        team_size=1,
        players=[PlayerInfo(index=0, name="a", team=0), PlayerInfo(index=1, name="b", team=1)],
        goals=[GoalInfo(time=3.5, team=1, scorer="b")],
    )
    assert decode(FramesParsed, encode(event)) == event
    assert event.key() == REPLAY_ID.encode()


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b'{"replay_id": "nothex", "uri": "file:///a", "filename": "a", "size_bytes": 1}',
        b'{"schema_version": 2, "replay_id": "'
        + REPLAY_ID.encode()
        + b'", "uri": "u", "filename": "a", "size_bytes": 1}',
        b'{"replay_id": "'
        + REPLAY_ID.encode()
        + b'", "uri": "u", "filename": "a", "size_bytes": 1, "surprise": 1}',
    ],
)
def test_invalid_messages_are_refused(raw: bytes):
    with pytest.raises(EventDecodeError):
        decode(ReplayUploaded, raw)


def test_topic_names_are_unique():
    assert len({t.name for t in ALL_TOPICS}) == len(ALL_TOPICS)


def test_live_state_follows_the_partitions_of_live_frames() -> None:
    from shared.events import LIVE_FRAMES, LIVE_STATE
    from shared.settings import Settings

    settings = Settings(topic_partitions={"live.frames": 12})
    assert settings.partitions(LIVE_STATE) == settings.partitions(LIVE_FRAMES) == 12
    with pytest.raises(ValueError, match="unknown topics"):
        Settings(topic_partitions={"live.state": 3})
