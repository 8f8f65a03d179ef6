"""Shared fixtures: where the replays are, and a few known files from the corpus manifest."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.settings import get_settings


@dataclass(frozen=True)
class ManifestRow:
    path: Path
    sha256: str
    team_size: int | None
    goals: int | None
    subtr_actor_ok: bool


def _manifest() -> list[ManifestRow]:
    root = get_settings().replays_dir
    manifest = root / "MANIFEST.tsv"
    if not manifest.exists():
        pytest.exit(f"replays not found at {root}: set RLIMPACT_REPLAYS_DIR", returncode=2)
    with manifest.open() as handle:
        return [
            ManifestRow(
                path=root / row["file"],
                sha256=row["sha256"],
                team_size=int(row["team_size"]) if row["team_size"] else None,
                goals=int(row["goals_in_header"]) if row["goals_in_header"] else None,
                subtr_actor_ok=row["subtr_actor_1.5.1_ndarray"] == "ok",
            )
            for row in csv.DictReader(handle, delimiter="\t")
        ]


@pytest.fixture(scope="session")
def manifest() -> list[ManifestRow]:
    return _manifest()


@pytest.fixture(scope="session")
def good_replays(manifest: list[ManifestRow]) -> list[ManifestRow]:
    return [r for r in manifest if r.path.parent.name == "corpus" and r.subtr_actor_ok]


@pytest.fixture(scope="session")
def bad_replays(manifest: list[ManifestRow]) -> list[ManifestRow]:
    return [r for r in manifest if r.path.parent.name == "bad"]


@pytest.fixture(scope="session")
def standard_replay(good_replays: list[ManifestRow]) -> ManifestRow:
    """A 3v3 replay with several goals."""
    return next(r for r in good_replays if r.team_size == 3 and (r.goals or 0) >= 4)
