"""Topic names and the versioned event schemas that travel on them: the one home for both.

Every event carries ``schema_version``; consumers validate each message with
:func:`decode` and send anything that does not validate to the ``events.invalid`` topic.
Large payloads never travel in Kafka: events carry a URI into the blob store (claim check).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION: Final = 1
HOUR_MS = 3_600_000


@dataclass(frozen=True)
class Topic:
    """A topic and its defaults; ``Settings.partitions`` gives the count in use (overrides in
    ``RLIMPACT_TOPIC_PARTITIONS``)."""

    name: str
    partitions: int
    retention_ms: int
    compacted: bool = False  # keep the latest record per key (and drop what is older too)
    partitions_of: str | None = None  # always as many partitions as this other topic


# The replay and live paths have partitions to spare: a consumer group spreads over at most as
# many instances of a stage as its topic has partitions, and 6 splits evenly over 1, 2, 3 and 6.
SCALE_OUT_PARTITIONS = 6
REPLAY_UPLOADED = Topic(
    "replay.uploaded", partitions=SCALE_OUT_PARTITIONS, retention_ms=14 * 24 * HOUR_MS
)
FRAMES_PARSED = Topic(
    "frames.parsed", partitions=SCALE_OUT_PARTITIONS, retention_ms=7 * 24 * HOUR_MS
)
FEATURES_READY = Topic(
    "features.ready", partitions=SCALE_OUT_PARTITIONS, retention_ms=7 * 24 * HOUR_MS
)
SCORES_EMITTED = Topic(
    "scores.emitted", partitions=SCALE_OUT_PARTITIONS, retention_ms=30 * 24 * HOUR_MS
)
REPLAY_FAILED = Topic("replay.failed", partitions=1, retention_ms=30 * 24 * HOUR_MS)
TRAIN_REQUESTED = Topic("train.requested", partitions=1, retention_ms=7 * 24 * HOUR_MS)
MODEL_PROMOTED = Topic("model.promoted", partitions=1, retention_ms=30 * 24 * HOUR_MS)
EVENTS_INVALID = Topic("events.invalid", partitions=1, retention_ms=30 * 24 * HOUR_MS)
REPLAY_SUBMITTED = Topic("replay.submitted", partitions=1, retention_ms=14 * 24 * HOUR_MS)
LIVE_FRAMES = Topic("live.frames", partitions=SCALE_OUT_PARTITIONS, retention_ms=6 * HOUR_MS)
SCORES_LIVE = Topic("scores.live", partitions=SCALE_OUT_PARTITIONS, retention_ms=24 * HOUR_MS)
# The live service's per-match state, keyed by match id, on the partition of its live.frames
# (services/live/changelog.py): as many partitions (an override of live.frames applies to it
# too), and kept as long.
LIVE_STATE = Topic(
    "live.state",
    LIVE_FRAMES.partitions,
    LIVE_FRAMES.retention_ms,
    compacted=True,
    partitions_of=LIVE_FRAMES.name,
)

ALL_TOPICS: tuple[Topic, ...] = (
    REPLAY_UPLOADED,
    FRAMES_PARSED,
    FEATURES_READY,
    SCORES_EMITTED,
    REPLAY_FAILED,
    TRAIN_REQUESTED,
    MODEL_PROMOTED,
    EVENTS_INVALID,
    REPLAY_SUBMITTED,
    LIVE_FRAMES,
    SCORES_LIVE,
    LIVE_STATE,
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


SOURCE_PATTERN = r"^[a-z0-9_.-]{1,32}$"


class ReplaySubmitted(Event):
    """A replay waiting for the ingestor at ``uri``, from ``rlimpact upload`` or any producer:
    ``s3://<RLIMPACT_S3_BUCKET>/<percent-encoded key>``, or ``file://`` inside the blob store's
    ``incoming/`` folder. The bytes never travel in the message."""

    uri: str = Field(max_length=4096)
    filename: str = Field(max_length=1024, description="checked like any file name from outside")
    source: str = Field("topic", pattern=SOURCE_PATTERN, description="who submitted it")


Stage = Literal["ingest", "parse", "featurize", "score"]


class ReplayFailed(Event):
    replay_id: str
    stage: Stage
    reason: str
    error_type: str
    uri: str | None = None
    rule: str | None = Field(None, description="the validation rule broken, when one was")


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
    model_id: int = Field(description="the impact model (registry id) that scored this")
    model_version: str
    impact: float = Field(description="offence + defence + pace")
    offence: float | None = Field(None, description="None only on rows scored before 004")
    defence: float | None = None
    pace: float | None = Field(None, description="None only on rows scored before 008")
    impact_per_minute: float | None = Field(None, description="None only on rows before 005")
    touches: int | None = Field(None, description="ball touches the impact was credited over")
    n_frames: int
    skill: float | None = Field(None, description="rating estimate; None: no skill model active")
    skill_model_id: int | None = None
    skill_model_version: str | None = None


PromotePolicy = Literal["if-none-active", "always", "never"]  # a trained model's promotion


class TrainRequested(Event):
    requested_by: str = "cli"
    promote: PromotePolicy = "if-none-active"


ModelKind = Literal["impact", "skill"]  # one active model per kind in the registry


class ModelPromoted(Event):
    model_id: int
    model_version: str
    kind: ModelKind = "impact"


# ---------------------------------------------------------------- live matches
# Units as in shared/frames.py: Unreal units (uu), uu/s, radians, boost 0..1. A field the feed
# did not send is None (older SOS plugin builds send no locations and no velocities at all).


class LiveBall(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    x: float
    y: float
    z: float
    vx: float | None = None
    vy: float | None = None
    vz: float | None = None
    speed: float | None = Field(None, ge=0, description="uu/s, when only the magnitude is known")


class LivePlayer(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=256, description="stable within the match")
    name: str = Field(max_length=256)
    team: Literal[0, 1]
    x: float | None = None
    y: float | None = None
    z: float | None = None
    roll: float | None = None
    pitch: float | None = None
    yaw: float | None = None
    vx: float | None = None
    vy: float | None = None
    vz: float | None = None
    speed: float | None = Field(None, ge=0, description="uu/s, when only the magnitude is known")
    boost: float = Field(0.0, ge=0, le=1)
    jumping: bool = False
    demolished: bool = False
    goals: int = 0
    shots: int = 0
    saves: int = 0
    assists: int = 0
    touches: int = 0

    @property
    def has_location(self) -> bool:
        return self.x is not None and self.y is not None and self.z is not None


LiveStatus = Literal["playing", "ended"]


class LiveFrame(Event):
    """One game-state update of a live match, as the bridge received it (``live.frames``)."""

    match_id: str = Field(min_length=1, max_length=128)
    source: Literal["sos", "plugin"]
    seq: int = Field(ge=0, description="per match, increasing, assigned by the bridge")
    received_at: datetime = Field(description="when the bridge received the feed's message")
    game_time: float | None = Field(None, description="seconds since the match began, if sent")
    seconds_remaining: float | None = None
    overtime: bool = False
    blue_goals: int = 0
    orange_goals: int = 0
    ball: LiveBall | None = None
    players: list[LivePlayer] = Field(default_factory=list)
    status: LiveStatus = "playing"

    def key(self) -> bytes | None:
        return self.match_id.encode()


class LivePlayerScore(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    name: str
    team: Literal[0, 1]
    impact: float = Field(description="offence + defence + pace, running over the match so far")
    offence: float
    defence: float
    pace: float = Field(0.0, description="the part from outpacing the cars on the pitch")
    p_score: float = Field(description="P(own team scores within the horizon), latest frame")
    p_concede: float = Field(description="P(own team concedes within the horizon), latest frame")
    n_frames: int
    goals: int = 0


class LiveScore(Event):
    """Running impact of every player of a live match (``scores.live``); ``live`` tells it
    from a replay's ``scores.emitted``. One update covers the frames that arrived together."""

    live: Literal[True] = True
    match_id: str
    seq: int = Field(description="seq of the newest live.frames event included")
    frames_received_at: list[datetime] = Field(
        description="bridge receipt time of each frame this update covers (latency)"
    )
    model_id: int | None = Field(description="registry id; None = the shipped default model")
    model_version: str
    feature_schema_version: int
    seconds_remaining: float | None = None
    overtime: bool = False
    blue_goals: int = 0
    orange_goals: int = 0
    status: LiveStatus = "playing"
    players: list[LivePlayerScore]

    def key(self) -> bytes | None:
        return self.match_id.encode()


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
