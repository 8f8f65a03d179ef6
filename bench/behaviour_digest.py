"""Digests of what a refactoring must not change: feature tables and the shipped model's scores.

    .venv/bin/python bench/behaviour_digest.py [--replays N] [--evaluate]

For the first N usable corpus replays (sorted by file name) prints one line per replay: the
sha256 of its feature table as written to Parquet (every column and the file metadata) and the
sha256 of its scores by the shipped model, as ``rlimpact score --format json`` computes them.
With ``--evaluate`` it also runs ``rlimpact evaluate`` (a minute or two) and prints the sha256
of its metrics.json. Run it before and after a change and diff the outputs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

# this checkout's code, not whatever checkout the venv was installed from (a git worktree)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow.parquet as pq

from services.cli.common import load_impact_model
from services.cli.offline import replay_json, score_file
from shared.settings import get_settings

try:  # the feature table's Parquet I/O moved to shared/ in the structure refactor
    from shared.features.dataset import write_features
except ImportError:  # the code before it
    from services.featurizer.dataset import write_features  # type: ignore[no-redef]


def table_digest(table: object, folder: Path, left_out: frozenset[bytes] = frozenset()) -> str:
    path = folder / "table.parquet"
    write_features(table, path)  # type: ignore[arg-type]
    arrow = pq.read_table(path)
    digest = hashlib.sha256()
    for key, value in sorted((arrow.schema.metadata or {}).items()):
        if key in left_out:
            continue
        digest.update(key + b"=" + value + b"\n")
    for name in arrow.column_names:
        digest.update(name.encode() + str(arrow.schema.field(name).type).encode())
        column = arrow.column(name).combine_chunks()
        for buffer in column.buffers():
            if buffer is not None:
                digest.update(buffer.to_pybytes())
    return digest.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replays", type=int, default=20)
    parser.add_argument("--evaluate", action="store_true")
    parser.add_argument(
        "--leave-out-metadata", action="append", default=[], metavar="KEY",
        help="a file metadata key the features digest skips (one added on purpose)",
    )  # fmt: skip
    args = parser.parse_args()
    from services.parser.parse import ReplayParseError

    settings = get_settings()
    left_out = frozenset(key.encode() for key in args.leave_out_metadata)
    model = load_impact_model(None, settings)
    print(f"model {model.version}")
    done = 0
    with tempfile.TemporaryDirectory() as tmp:
        for path in sorted((settings.replays_dir / "corpus").glob("*.replay")):
            if done == args.replays:
                break
            try:
                parsed, table, scored = score_file(path, model, settings)
            except ReplayParseError:
                continue
            scores = json.dumps(replay_json(path, parsed, scored.scores), sort_keys=True)
            score_hash = hashlib.sha256(scores.encode()).hexdigest()
            features = table_digest(table, Path(tmp), left_out)
            print(f"{path.name} features {features} scores {score_hash}")
            done += 1
        if args.evaluate:
            out = Path(tmp) / "evaluate"
            cli = [sys.executable, "-m", "services.cli", "evaluate", "--out", str(out)]
            root = Path(__file__).resolve().parents[1]
            subprocess.run(
                cli, check=True, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            metrics = (out / "metrics.json").read_bytes()
            print(f"evaluate metrics.json {hashlib.sha256(metrics).hexdigest()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
