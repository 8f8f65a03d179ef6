"""Topic names and the versioned event schemas that travel on them: the one home for both.

Every event carries ``schema_version``; consumers validate each message with
:func:`decode` and send anything that does not validate to the ``events.invalid`` topic.
Large payloads never travel in Kafka: events carry a URI into the blob store (claim check).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 1
HOUR_MS = 3_600_000


@dataclass(frozen=True)
class Topic:
    name: str
    partitions: int
    retention_ms: int


REPLAY_UPLOADED = Topic("replay.uploaded", partitions=2, retention_ms=14 * 24 * HOUR_MS)
FRAMES_PARSED = Topic("frames.parsed", partitions=2, retention_ms=7 * 24 * HOUR_MS)
FEATURES_READY = Topic("features.ready", partitions=2, retention_ms=7 * 24 * HOUR_MS)
SCORES_EMITTED = Topic("scores.emitted", partitions=2, retention_ms=30 * 24 * HOUR_MS)
REPLAY_FAILED = Topic("replay.failed", partitions=1, retention_ms=30 * 24 * HOUR_MS)
TRAIN_REQUESTED = Topic("train.requested", partitions=1, retention_ms=7 * 24 * HOUR_MS)
MODEL_PROMOTED = Topic("model.promoted", partitions=1, retention_ms=30 * 24 * HOUR_MS)
EVENTS_INVALID = Topic("events.invalid", partitions=1, retention_ms=30 * 24 * HOUR_MS)

ALL_TOPICS: tuple[Topic, ...] = (
    REPLAY_UPLOADED,
    FRAMES_PARSED,
    FEATURES_READY,
    SCORES_EMITTED,
    REPLAY_FAILED,
    TRAIN_REQUESTED,
    MODEL_PROMOTED,
    EVENTS_INVALID,
)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    emitted_at: datetime = Field(default_factory=utcnow)

    def key(self) -> bytes | None:
        """Partition key: events of one replay stay in order on one partition."""
        replay_id = getattr(self, "replay_id", None)
        return replay_id.encode() if replay_id else None


class PlayerInfo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int = Field(ge=0, description="column block of this player in the frame array")
    name: str
    team: Literal[0, 1]
    platform_id: str | None = None
    is_bot: bool = False


class GoalInfo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    time: float = Field(description="replay time in seconds")
    team: Literal[0, 1]
    scorer: str | None = None


class ReplayUploaded(Event):
    replay_id: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the file")
    uri: str
    filename: str
    size_bytes: int = Field(ge=0)
    source: str = "watch"


Stage = Literal["ingest", "parse", "featurize", "score"]


class ReplayFailed(Event):
    replay_id: str
    stage: Stage
    reason: str
    error_type: str
    uri: str | None = None


class FramesParsed(Event):
    replay_id: str
    frames_uri: str
    n_frames: int = Field(ge=1)
    fps: float
    team_size: int
    players: list[PlayerInfo]
    goals: list[GoalInfo]


class FeaturesReady(Event):
    replay_id: str
    features_uri: str
    feature_schema_version: int
    n_frames: int
    players: list[PlayerInfo]


class ScoreEmitted(Event):
    replay_id: str
    player_index: int
    player_name: str
    team: Literal[0, 1]
    model_id: int
    model_version: str
    impact: float
    n_frames: int


class TrainRequested(Event):
    requested_by: str = "cli"
    promote: Literal["if-none-active", "always", "never"] = "if-none-active"


class ModelPromoted(Event):
    model_id: int
    model_version: str


class InvalidEvent(Event):
    topic: str
    reason: str
    raw: str


class EventDecodeError(ValueError):
    """A message that is not a valid event of the expected type."""


def encode(event: Event) -> bytes:
    return event.model_dump_json().encode()


E = TypeVar("E", bound=Event)


def decode(event_type: type[E], raw: bytes) -> E:
    try:
        return event_type.model_validate_json(raw)
    except ValidationError as error:
        raise EventDecodeError(f"not a valid {event_type.__name__}: {error}") from error
