"""Feature tables on disk: Parquet, one row per (frame, player), schema version in the metadata.

Key columns, the labels, ``live`` (play is on) and ``touched`` (the player touched the ball in
that frame) come first, then one float column per feature in ``FEATURE_NAMES`` order. The file
metadata holds the feature schema version, the players, the goals, the arena (map name), the
game mode and the labels' horizon.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shared.events import GoalInfo, PlayerInfo
from shared.features.table import FEATURE_NAMES, FEATURE_SCHEMA_VERSION, FeatureTable
from shared.storage import BlobStore

SCHEMA_VERSION_KEY = b"rlimpact.feature_schema_version"
PLAYERS_KEY = b"rlimpact.players"
GOALS_KEY = b"rlimpact.goals"
MAP_NAME_KEY = b"rlimpact.map_name"
GAME_MODE_KEY = b"rlimpact.game_mode"
LABEL_HORIZON_KEY = b"rlimpact.label_horizon_seconds"


class FeatureSchemaError(ValueError):
    """A feature file written with another feature schema version."""


class StaleLabelsError(ValueError):
    """Feature tables whose labels look another horizon ahead than the reader's."""


def check_label_horizon(tables: list[FeatureTable], horizon_seconds: float) -> None:
    """Refuse tables labelled with another horizon (a file that does not record its horizon
    predates the record and passes)."""
    stale = [t for t in tables if t.label_horizon_seconds not in (None, horizon_seconds)]
    if stale:
        horizons = sorted({t.label_horizon_seconds for t in stale})  # type: ignore[type-var]
        raise StaleLabelsError(
            f"{len(stale)} feature tables are labelled {horizons} s ahead, not "
            f"{horizon_seconds:g} s: featurize their replays again"
        )


def to_arrow(table: FeatureTable) -> pa.Table:
    n_frames, n_players, _ = table.features.shape
    teams = np.array([p.team for p in table.players], dtype=np.int8)
    columns: dict[str, np.ndarray | pa.Array] = {
        "replay_id": pa.array([table.replay_id] * (n_frames * n_players), pa.string()),
        "frame": np.repeat(np.arange(n_frames, dtype=np.int32), n_players),
        "time": np.repeat(table.time.astype(np.float32), n_players),
        "segment": np.repeat(table.segment.astype(np.int16), n_players),
        "live": np.repeat(table.live.astype(bool), n_players),
        "player_index": np.tile(np.arange(n_players, dtype=np.int16), n_frames),
        "team": np.tile(teams, n_frames),
        "label_score": table.label_score.reshape(-1),
        "label_concede": table.label_concede.reshape(-1),
        "touched": table.touched.reshape(-1),
    }
    flat = table.features.reshape(n_frames * n_players, -1)
    for i, name in enumerate(FEATURE_NAMES):
        columns[name] = flat[:, i]
    metadata = {
        SCHEMA_VERSION_KEY: str(FEATURE_SCHEMA_VERSION).encode(),
        PLAYERS_KEY: json.dumps([p.model_dump(mode="json") for p in table.players]).encode(),
        GOALS_KEY: json.dumps([g.model_dump(mode="json") for g in table.goals]).encode(),
        MAP_NAME_KEY: json.dumps(table.map_name).encode(),
        GAME_MODE_KEY: json.dumps(table.game_mode).encode(),
    }
    if table.label_horizon_seconds is not None:
        metadata[LABEL_HORIZON_KEY] = json.dumps(table.label_horizon_seconds).encode()
    return pa.table(columns).replace_schema_metadata(metadata)


def write_features(table: FeatureTable, path: Path) -> None:
    # No dictionary encoding: float features hardly repeat, and trying it costs more than half
    # of the write (the files come out smaller without it).
    pq.write_table(to_arrow(table), path, compression="zstd", use_dictionary=False)


def read_stored_features(store: BlobStore, features_uri: str) -> FeatureTable:
    """The feature table of a blob of the store (refusing a URI outside it)."""
    with store.local_path(features_uri) as path:
        return read_features(path)


def feature_file_version(path: Path) -> int:
    """The feature schema version a file was written with (its metadata only is read)."""
    return _schema_version(pq.read_schema(path).metadata)


def _schema_version(metadata: dict[bytes, bytes] | None) -> int:
    return int((metadata or {}).get(SCHEMA_VERSION_KEY, b"0"))


def read_features(path: Path) -> FeatureTable:
    arrow = pq.read_table(path)
    metadata = arrow.schema.metadata or {}
    version = _schema_version(metadata)
    if version != FEATURE_SCHEMA_VERSION:
        raise FeatureSchemaError(
            f"{path}: feature schema v{version}, this code reads v{FEATURE_SCHEMA_VERSION}"
        )
    players = [PlayerInfo.model_validate(p) for p in json.loads(metadata[PLAYERS_KEY])]
    goals = [GoalInfo.model_validate(g) for g in json.loads(metadata[GOALS_KEY])]
    n_players = len(players)
    n_rows = arrow.num_rows
    n_frames = n_rows // n_players
    features = np.stack([arrow.column(name).to_numpy() for name in FEATURE_NAMES], axis=1).reshape(
        n_frames, n_players, len(FEATURE_NAMES)
    )
    per_frame = slice(None, None, n_players)
    return FeatureTable(
        replay_id=str(arrow.column("replay_id")[0]),
        time=arrow.column("time").to_numpy()[per_frame],
        segment=arrow.column("segment").to_numpy()[per_frame],
        live=arrow.column("live").to_numpy()[per_frame],
        features=features.astype(np.float32),
        label_score=arrow.column("label_score").to_numpy().reshape(n_frames, n_players),
        label_concede=arrow.column("label_concede").to_numpy().reshape(n_frames, n_players),
        touched=arrow.column("touched").to_numpy().reshape(n_frames, n_players),
        players=players,
        goals=goals,
        map_name=json.loads(metadata.get(MAP_NAME_KEY, b"null")),
        game_mode=json.loads(metadata.get(GAME_MODE_KEY, b"null")),
        label_horizon_seconds=json.loads(metadata.get(LABEL_HORIZON_KEY, b"null")),
    )
