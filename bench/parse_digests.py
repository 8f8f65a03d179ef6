"""Digests of what the parse stage produces, to show that a change to it changes no result.

    .venv/bin/python bench/parse_digests.py [--limit N] [--replays-dir DIR] > digests.txt

For every corpus file (``$RLIMPACT_REPLAYS_DIR/corpus``, sorted; the first N with --limit) that
parses and validates, prints one line: the file, the sha256 of its frames (every array and the
players, goals, map and mode of :class:`~shared.frames.ParsedReplay`), of its feature table
(``services.featurizer.dataset.to_arrow``: every column and the metadata) featurized in memory
as the CLI does, and of the feature table featurized from the frames file written and read back
as the parser and featurizer services do. A rejected file prints its reason. The last line is
the sha256 of the stdout of ``rlimpact score`` over the same files (the shipped model).

Run it before and after a change and ``diff`` the two outputs: no line may differ.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from services.parser.parse import ReplayParseError
from services.parser.service import parse_to_store
from services.parser.validate import parse_valid_replay
from shared.features.batch import featurize
from shared.features.dataset import to_arrow
from shared.frames import ParsedReplay
from shared.settings import get_settings
from shared.storage import FileBlobStore, sha256_file


def _array_digest(hasher: hashlib._Hash, name: str, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array)
    hasher.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
    hasher.update(array.tobytes())


def frames_digest(parsed: ParsedReplay) -> str:
    hasher = hashlib.sha256()
    for name in ("time", "seconds_remaining", "ball", "cars", "touches"):
        _array_digest(hasher, name, getattr(parsed, name))
    described = {
        "fps": parsed.fps,
        "team_size": parsed.team_size,
        "players": [p.model_dump(mode="json") for p in parsed.players],
        "goals": [g.model_dump(mode="json") for g in parsed.goals],
        "map_name": parsed.map_name,
        "game_mode": parsed.game_mode,
    }
    hasher.update(json.dumps(described, sort_keys=True).encode())
    return hasher.hexdigest()


def table_digest(table: pa.Table) -> str:
    hasher = hashlib.sha256()
    for name, metadata in sorted((table.schema.metadata or {}).items()):
        hasher.update(name + b"=" + metadata)
    for name, column in zip(table.column_names, table.columns, strict=True):
        hasher.update(f"{name}:{column.type}".encode())
        if pa.types.is_string(column.type):
            hasher.update("\0".join(column.to_pylist()).encode())
        else:
            _array_digest(hasher, name, column.to_numpy())
    return hasher.hexdigest()


def replay_line(path: Path, store: FileBlobStore) -> str:
    settings = get_settings()
    replay_id = "".join(c for c in path.stem if c.isalnum())  # the file's name, not its hash
    try:
        parsed = parse_valid_replay(path, replay_id, settings.fps, settings.validation)
    except ReplayParseError as error:
        return f"{path.name}\trejected\t{error.reason}"
    in_memory = table_digest(to_arrow(featurize(parsed, settings.horizon_seconds)))
    sha256 = sha256_file(path)
    uri = store.put_file("replays", sha256, ".replay", path)  # as the ingestor stores it
    event = parse_to_store(uri, sha256, settings.fps, store, settings.validation)
    with store.local_path(event.frames_uri) as frames_path:
        # named like the in-memory one, so that the digests differ only if the contents do
        loaded = replace(ParsedReplay.load(frames_path), replay_id=replay_id)
    stored = table_digest(to_arrow(featurize(loaded, settings.horizon_seconds)))
    return f"{path.name}\t{frames_digest(parsed)}\t{in_memory}\t{stored}"


def score_digest(files: list[Path]) -> str:
    command = [sys.executable, "-m", "services.cli", "score", *map(str, files)]
    done = subprocess.run(command, capture_output=True, check=False)
    if not done.stdout:
        raise SystemExit(f"rlimpact score printed nothing: {done.stderr.decode()[-2000:]}")
    return hashlib.sha256(done.stdout).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="only the first N files")
    parser.add_argument("--replays-dir", type=Path, default=get_settings().replays_dir)
    args = parser.parse_args()
    files = sorted((args.replays_dir / "corpus").glob("*.replay"))[: args.limit]
    if not files:
        parser.error(f"no corpus replays in {args.replays_dir} (set --replays-dir)")
    with tempfile.TemporaryDirectory() as blob_dir:
        store = FileBlobStore(Path(blob_dir))
        for path in files:
            print(replay_line(path, store), flush=True)
    print(f"rlimpact score\t{score_digest(files)}")


if __name__ == "__main__":
    main()
