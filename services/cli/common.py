"""Helpers shared by the CLI's command modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

DEFAULT_MODEL_FILE = "impact.onnx"


def replay_files(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(path.rglob("*.replay"))
        elif path.exists():
            yield path
        else:
            raise SystemExit(f"rlimpact: no such file or folder: {path}")
