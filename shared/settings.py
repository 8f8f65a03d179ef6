"""The one typed settings object. Every value comes from an ``RLIMPACT_*`` environment variable."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent

SERVICE_NAMES = ("ingestor", "parser", "featurizer", "trainer", "scorer")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RLIMPACT_", extra="ignore")

    # Infrastructure
    data_dir: Path = Field(
        REPO_ROOT / ".rlimpact", description="Kafka/Postgres data, blobs, watch dir"
    )
    kafka_bootstrap: str = "127.0.0.1:9092"
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

    # Processing
    fps: float = Field(10.0, gt=0, description="frames per second the parser samples at")
    horizon_seconds: float = Field(10.0, gt=0, description="label horizon: goal within T s")
    parser_workers: int = Field(2, ge=1)
    max_replay_bytes: int = 50 * 1024 * 1024
    watch_interval_seconds: float = 1.0
    model_poll_seconds: float = 2.0
    consumer_group_prefix: str = "rlimpact"

    # Metrics: each service serves /metrics on metrics_base_port + its index in SERVICE_NAMES
    metrics_host: str = "127.0.0.1"
    metrics_base_port: int = 9181

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

    def metrics_port(self, service: str) -> int:
        return self.metrics_base_port + SERVICE_NAMES.index(service)

    def consumer_group(self, service: str) -> str:
        return f"{self.consumer_group_prefix}-{service}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
