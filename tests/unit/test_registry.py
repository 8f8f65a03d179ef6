"""Following the registry's active model (``shared.registry.ModelFollower``, the scorer's and
the live service's): loaded once per model, checked against its hash, a file that will not load
counted and not tried again, the model in use kept meanwhile."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from shared import metrics
from shared.db import ModelRecord
from shared.model import DEFAULT_MODEL_FILE, ImpactModel
from shared.registry import ModelFollower
from shared.settings import Settings
from shared.storage import sha256_file


def _record(model_id: int, file: Path, sha256: str | None = None) -> ModelRecord:
    return ModelRecord(
        id=model_id,
        name="impact",
        version=f"v{model_id}",
        uri=file.absolute().as_uri(),
        sha256=sha256 or sha256_file(file),
        feature_schema_version=1,
        status="active",
        metrics={},
    )


def _load_failures(service: str) -> float:
    return metrics.ERRORS.labels(service, "model_load")._value.get()


@pytest.fixture
def shipped(tmp_path: Path) -> Path:
    file = tmp_path / "impact.onnx"
    shutil.copy(Settings().default_model_dir / DEFAULT_MODEL_FILE, file)
    return file


async def test_a_model_is_loaded_once_and_a_bad_one_is_not_retried(tmp_path, shipped) -> None:
    follower = ModelFollower("test-follower", Settings(data_dir=tmp_path), "impact", ImpactModel)
    assert await follower.follow(None) is None and follower.current is None

    first = await follower.follow(_record(1, shipped))
    assert first is not None and isinstance(first.model, ImpactModel)
    assert follower.current is first
    assert await follower.follow(_record(1, shipped)) is None, "loaded already"

    failures = _load_failures("test-follower")
    bad = _record(2, shipped, sha256="0" * 64)  # fails its registered checksum
    assert await follower.follow(bad) is None
    assert follower.current is first, "the model in use is kept"
    assert _load_failures("test-follower") == failures + 1
    assert await follower.follow(bad) is None
    assert _load_failures("test-follower") == failures + 1, "not tried again"

    second = await follower.follow(_record(3, shipped))
    assert second is not None and follower.current is second
