"""docker-compose.yml must describe the services as they really are."""

from __future__ import annotations

import importlib.util

import pytest
import yaml

from shared.settings import REPO_ROOT, SERVICE_NAMES, Settings

COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
PROMETHEUS = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus.yml").read_text())


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_each_service_runs_its_real_entry_point(name: str):
    service = COMPOSE["services"][name]
    module = service["command"][2]
    assert service["command"][:2] == ["python", "-m"] and module == f"services.{name}"
    assert importlib.util.find_spec(f"{module}.__main__") is not None


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_each_environment_variable_is_a_setting(name: str):
    fields = {f"RLIMPACT_{field.upper()}" for field in Settings.model_fields}
    env = COMPOSE["services"][name]["environment"]
    assert set(env) <= fields, set(env) - fields
    Settings.model_validate({k.removeprefix("RLIMPACT_").lower(): v for k, v in env.items()})


def test_prometheus_scrapes_every_service_on_its_metrics_port():
    env = COMPOSE["services"]["scorer"]["environment"]
    settings = Settings(metrics_base_port=int(env["RLIMPACT_METRICS_BASE_PORT"]))
    targets = PROMETHEUS["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"{name}:{settings.metrics_port(name)}" for name in SERVICE_NAMES]


def test_infrastructure_is_in_the_stack():
    assert {"kafka", "postgres", "prometheus"} <= set(COMPOSE["services"])
    env = COMPOSE["services"]["parser"]["environment"]
    assert env["RLIMPACT_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert env["RLIMPACT_PG_HOST"] == "postgres"


def test_the_services_share_no_disk_but_the_blob_bucket():
    """Blobs in MinIO: no service mounts a volume but the ingestor its watched folder."""
    for name in SERVICE_NAMES:
        service = COMPOSE["services"][name]
        settings = _settings(service["environment"])
        assert settings.blob_store == "s3" and settings.s3_endpoint == "http://minio:9000"
        assert [v.split(":")[1] for v in service.get("volumes", [])] in ([], ["/data/inbox"])
    assert COMPOSE["services"]["ingestor"]["volumes"] == ["./inbox:/data/inbox"]


def test_the_blob_bucket_is_created_by_the_real_cli_before_the_services_start():
    from services.cli import build_parser

    job = COMPOSE["services"]["blob-bucket"]
    assert job["command"][:3] == ["python", "-m", "services.cli"]
    args = build_parser().parse_args(job["command"][3:])
    assert args.command == "bucket" and args.create
    bucket = _settings(job["environment"]).s3_bucket
    for name in SERVICE_NAMES:
        service = COMPOSE["services"][name]
        assert _settings(service["environment"]).blob_bucket == bucket
        assert service["depends_on"]["blob-bucket"] == {
            "condition": "service_completed_successfully"
        }
    minio = COMPOSE["services"]["minio"]["environment"]
    settings = _settings(job["environment"])
    assert minio["MINIO_ROOT_USER"] == settings.s3_access_key
    assert minio["MINIO_ROOT_PASSWORD"] == settings.s3_secret_key.get_secret_value()


def _settings(env: dict[str, str]) -> Settings:
    return Settings.model_validate({k.removeprefix("RLIMPACT_").lower(): v for k, v in env.items()})
