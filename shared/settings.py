"""The one typed settings object. Every value comes from an ``RLIMPACT_*`` environment variable."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.events import ALL_TOPICS, Topic

REPO_ROOT = Path(__file__).resolve().parent.parent

SERVICE_NAMES = ("ingestor", "parser", "featurizer", "trainer", "scorer", "bridge", "live")


class ValidationRules(BaseModel):
    """What a parsed replay must satisfy to be scored (``services/parser/validate.py``).

    Set from the environment as ``RLIMPACT_VALIDATION__<FIELD>``, e.g.
    ``RLIMPACT_VALIDATION__MIN_DURATION_SECONDS=30``.
    """

    min_frames: int = Field(20, ge=1, description="sampled frames")
    min_players: int = Field(1, ge=1, description="players who drove a car")
    max_players: int = Field(10, ge=1, description="cars on the pitch at the same time")
    min_duration_seconds: float = Field(5.0, ge=0)
    max_duration_seconds: float = Field(4 * 3600.0, gt=0)
    # Every arena (soccar, hoops, dropshot, rumble, snow day) fits in this box, goals included.
    arena_half_width: float = Field(6000.0, gt=0, description="|x| limit, Unreal units")
    arena_half_length: float = Field(7000.0, gt=0, description="|y| limit")
    arena_min_z: float = -200.0
    arena_max_z: float = 2600.0
    max_out_of_bounds_fraction: float = Field(
        0.01, ge=0, le=1, description="share of ball/car positions allowed outside the box"
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RLIMPACT_", env_nested_delimiter="__", extra="ignore"
    )

    # Infrastructure
    data_dir: Path = Field(
        REPO_ROOT / ".rlimpact", description="Kafka/Postgres data, blobs, watch dir"
    )
    kafka_bootstrap: str = "127.0.0.1:9092"
    # Partitions per topic name where they differ from shared/events.py, as JSON, e.g.
    # RLIMPACT_TOPIC_PARTITIONS='{"replay.uploaded": 12}'. ensure_topics creates topics with
    # them and grows an existing topic that has fewer (partitions are never removed).
    topic_partitions: dict[str, int] = Field(default_factory=dict)
    pg_host: str = "127.0.0.1"
    pg_port: int = 5433
    pg_user: str = "rlimpact"
    pg_password: str = "rlimpact"
    pg_db: str = "rlimpact"

    # Data locations (None = derived from data_dir)
    storage_dir: Path | None = None
    watch_dir: Path | None = None
    replays_dir: Path = REPO_ROOT.parent / "shared" / "replays"
    default_model_dir: Path = REPO_ROOT / "models" / "default"

    # The blob store behind the events' claim checks (shared/storage.py): a local folder
    # (blob_dir), or an S3-compatible bucket (s3_endpoint and credentials below; blob_bucket,
    # default s3_bucket) under blob_prefix, so that services on several machines share no disk.
    blob_store: Literal["file", "s3"] = "file"
    blob_bucket: str | None = None
    blob_prefix: str = "blobs/"

    # Recovery (shared/recovery.py): the ingestor re-drives replays neither scored nor failed
    # whose status has not moved for reconcile_after_seconds, at start-up and every interval.
    reconcile_interval_seconds: float = Field(60.0, gt=0)
    reconcile_after_seconds: float = Field(120.0, ge=0)

    # Processing
    fps: float = Field(10.0, gt=0, description="frames per second the parser samples at")
    horizon_seconds: float = Field(10.0, gt=0, description="label horizon: goal within T s")
    parser_workers: int = Field(2, ge=1)
    parse_timeout_seconds: float = Field(60.0, gt=0, description="a longer parse is killed")
    parser_recycle_after: int = Field(50, ge=1, description="replays per worker process")
    validation: ValidationRules = ValidationRules()
    max_replay_bytes: int = 50 * 1024 * 1024
    watch_interval_seconds: float = 1.0
    model_poll_seconds: float = 2.0
    consumer_group_prefix: str = "rlimpact"

    # A dependency that is down (Postgres, Kafka, the blob store, S3) is waited for: the same
    # work is retried with exponential backoff from retry_base_seconds, capped at
    # retry_max_seconds and jittered, for as long as the outage lasts.
    retry_base_seconds: float = Field(0.5, gt=0)
    retry_max_seconds: float = Field(10.0, gt=0)

    # S3-compatible bucket source: the ingestor takes in new objects under s3_prefix (off while
    # s3_bucket is unset); `rlimpact upload` puts files under s3_upload_prefix. deploy/minio.sh
    # serves s3_endpoint locally with these credentials.
    s3_endpoint: str = "http://127.0.0.1:9000"
    s3_bucket: str | None = None
    s3_prefix: str = "incoming/"
    s3_upload_prefix: str = "uploads/"
    s3_access_key: str = "rlimpact"
    s3_secret_key: SecretStr = SecretStr("rlimpact-secret")
    s3_region: str = "us-east-1"
    s3_poll_seconds: float = Field(2.0, gt=0)

    # Ballchasing.com collector (`rlimpact collect ballchasing`). The budgets default to the
    # documented limits of an account without a Patreon tier; 429 and 5xx are retried.
    ballchasing_base_url: str = "https://ballchasing.com/api"
    ballchasing_token: str | None = Field(None, repr=False, description="API token")
    ballchasing_calls_per_second: int = Field(2, ge=1)
    ballchasing_calls_per_hour: int = Field(500, ge=1)
    ballchasing_downloads_per_second: int = Field(1, ge=1)
    ballchasing_downloads_per_hour: int = Field(200, ge=1)
    ballchasing_retries: int = Field(4, ge=0, description="per request, on 429/5xx/no answer")
    ballchasing_backoff_seconds: float = Field(1.0, ge=0, description="doubles per retry")
    ballchasing_max_attempts: int = Field(3, ge=1, description="runs that may try one replay")
    ballchasing_timeout_seconds: float = Field(30.0, gt=0)

    # Live matches. The bridge reads SOS plugin feeds (comma-separated WebSocket URLs, "" = none)
    # and serves the custom-plugin endpoint ws://bridge_plugin_host:bridge_plugin_port/plugin,
    # which is off while bridge_plugin_token is unset. The live service serves the live page
    # and the score streams on live_http_host:live_http_port.
    bridge_sos_urls: str = "ws://localhost:49122"
    bridge_plugin_host: str = "127.0.0.1"
    bridge_plugin_port: int = 49123
    bridge_plugin_token: SecretStr | None = None
    bridge_reconnect_max_seconds: float = Field(10.0, gt=0, description="backoff ceiling")
    live_http_host: str = "127.0.0.1"
    live_http_port: int = 8765
    live_match_idle_seconds: float = Field(60.0, gt=0, description="then a match is forgotten")
    live_linger_ms: int = Field(
        0, ge=0, description="the bridge and live producers batch what comes within this"
    )
    live_snapshot_seconds: float = Field(
        2.0, gt=0, description="how often a changing match's state goes to live.state"
    )
    # The live service's fetches of live.frames: the broker answers once it has
    # live_fetch_min_bytes or live_fetch_max_wait_ms has passed. A few frames' worth (8192,
    # 5 ms) makes a poll score several frames together, at about two thirds of the live
    # service's CPU, but measured a longer latency (README, Live benchmark): off by default.
    live_fetch_min_bytes: int = Field(1, ge=1)
    live_fetch_max_wait_ms: int = Field(100, ge=0)

    # Metrics: each service instance serves /metrics on its own port (see metrics_port)
    metrics_host: str = "127.0.0.1"
    metrics_base_port: int = 9181

    # Instances: the supervisor (`rlimpact supervise`) numbers the instances of each service
    # from 0 and restarts one that exits after a jittered delay of supervisor_backoff_initial
    # seconds, doubling up to supervisor_backoff_max; a run of supervisor_healthy_seconds
    # resets the delay. On stop, children get SIGTERM, then SIGKILL after the grace period.
    # The instance is also in the scorer's Kafka transactional id, so a restarted scorer fences
    # the one it replaces.
    instance: int = Field(0, ge=0, description="this process's instance of its service")
    supervisor_backoff_initial_seconds: float = Field(0.5, gt=0)
    supervisor_backoff_max_seconds: float = Field(30.0, gt=0)
    supervisor_healthy_seconds: float = Field(60.0, ge=0)
    supervisor_stop_grace_seconds: float = Field(15.0, ge=0)

    @field_validator("topic_partitions")
    @classmethod
    def _known_topics_and_counts(cls, value: dict[str, int]) -> dict[str, int]:
        known = {topic.name for topic in ALL_TOPICS if topic.partitions_of is None}
        if unknown := sorted(set(value) - known):
            raise ValueError(f"unknown topics {unknown}; the topics are {sorted(known)}")
        if low := sorted(name for name, count in value.items() if count < 1):
            raise ValueError(f"a topic needs at least 1 partition: {low}")
        return value

    def partitions(self, topic: Topic) -> int:
        """The partitions ``topic`` has (ensure_topics) and its consumers spread over."""
        return self.topic_partitions.get(topic.partitions_of or topic.name, topic.partitions)

    @property
    def pg_dsn(self) -> str:
        return (
            f"postgresql://{self.pg_user}:{self.pg_password}"
            f"@{self.pg_host}:{self.pg_port}/{self.pg_db}"
        )

    @property
    def blob_dir(self) -> Path:
        return self.storage_dir or self.data_dir / "blobs"

    @property
    def inbox_dir(self) -> Path:
        return self.watch_dir or self.data_dir / "inbox"

    @property
    def upload_dir(self) -> Path:
        """Where `rlimpact upload` leaves files for the ingestor when no bucket is set."""
        return self.blob_dir / "incoming"

    @property
    def run_dir(self) -> Path:
        """Pid files, the supervisor's state and the Prometheus targets file."""
        return self.data_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    def metrics_port(self, service: str, instance: int | None = None) -> int:
        """``/metrics`` port of an instance (default: this process's) of a service.

        Instance i of every service has a block of ports of its own above the base, so any
        number of instances of all services run side by side on one machine.
        """
        index = self.instance if instance is None else instance
        return self.metrics_base_port + len(SERVICE_NAMES) * index + SERVICE_NAMES.index(service)

    def consumer_group(self, service: str) -> str:
        return f"{self.consumer_group_prefix}-{service}"

    @property
    def sos_urls(self) -> list[str]:
        return [url.strip() for url in self.bridge_sos_urls.split(",") if url.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
