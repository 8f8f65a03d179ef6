"""The parsed-replay data model shared by parser (writer) and featurizer (reader).

Frames are stored as one Arrow IPC file per replay (format 3), LZ4-compressed: one row per
sampled frame, float32 columns ``time``, ``seconds_remaining``, ``ball`` (a fixed-size list of
``BALL_FIELDS``) and ``cars`` (a fixed-size list of players x ``PLAYER_FIELDS``), and a JSON
header in the schema metadata (``rlimpact.frames``) with players, goals, ball touches, arena
and mode (the ``frames.parsed`` event repeats part of it). ``bench/frames_store.py`` measured
this against the other candidates. Frames files of format 2 (a deflate-compressed ``.npz``,
written before) are still read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import TypeAdapter

from shared.events import GoalInfo, PlayerInfo

FRAMES_FORMAT_VERSION = 3  # 2: touches; 3: Arrow IPC instead of .npz
FRAMES_SUFFIX = ".arrow"
LEGACY_FRAMES_SUFFIX = ".npz"  # format 2, still read
# The Arrow IPC buffer codec of new frames files: "lz4" (LZ4 frame), "zstd" or None.
FRAMES_COMPRESSION = "lz4"
_LEGACY_NPZ_VERSION = 2
_HEADER_KEY = b"rlimpact.frames"
_ZIP_MAGIC = b"PK\x03\x04"  # a format-2 .npz (a zip archive)

BALL_FIELDS = ("x", "y", "z", "vx", "vy", "vz")
PLAYER_FIELDS = (
    "x", "y", "z",
    "roll", "pitch", "yaw",  # rotation about x, y, z (radians)
    "vx", "vy", "vz",
    "boost",        # 0..1
    "jumping",      # any jump/dodge active
    "demolished",   # 1 while the car is demolished / absent
)  # fmt: skip
PLAYER_FIELD = {name: i for i, name in enumerate(PLAYER_FIELDS)}
BALL_FIELD = {name: i for i, name in enumerate(BALL_FIELDS)}

_players_adapter = TypeAdapter(list[PlayerInfo])
_goals_adapter = TypeAdapter(list[GoalInfo])


def frames_suffix(uri: str) -> str:
    """The suffix of a frames blob's URI: the current one, or format 2's for older blobs."""
    return LEGACY_FRAMES_SUFFIX if uri.endswith(LEGACY_FRAMES_SUFFIX) else FRAMES_SUFFIX


@dataclass(frozen=True)
class ParsedReplay:
    replay_id: str
    fps: float
    time: np.ndarray  # [T] replay seconds
    seconds_remaining: np.ndarray  # [T]
    ball: np.ndarray  # [T, len(BALL_FIELDS)]
    cars: np.ndarray  # [T, P, len(PLAYER_FIELDS)]
    players: list[PlayerInfo]
    goals: list[GoalInfo]
    team_size: int
    # [K, 2] int32 (sampled frame index, player index) per ball touch, sorted by frame
    touches: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int32))
    map_name: str | None = None  # the header's MapName (the arena), when it has one
    game_mode: str | None = None  # shared.scope.game_mode of the replay (None: not known)

    @property
    def n_frames(self) -> int:
        return int(self.time.shape[0])

    def header(self) -> dict:
        """What the frames file keeps besides the arrays (JSON-ready)."""
        return {
            "format_version": FRAMES_FORMAT_VERSION,
            "replay_id": self.replay_id,
            "fps": self.fps,
            "team_size": self.team_size,
            "players": _players_adapter.dump_python(self.players, mode="json"),
            "goals": _goals_adapter.dump_python(self.goals, mode="json"),
            "map_name": self.map_name,
            "game_mode": self.game_mode,
        }

    def save(self, path: Path, compression: str | None = FRAMES_COMPRESSION) -> None:
        """Write the frames file (format 3) at ``path``; ``compression`` is the Arrow codec."""
        header = self.header() | {
            "n_players": int(self.cars.shape[1]),
            "touches": self.touches.astype(np.int32).reshape(-1, 2).tolist(),
        }
        table = pa.table(
            {
                "time": _float32(self.time),
                "seconds_remaining": _float32(self.seconds_remaining),
                "ball": _fixed_rows(self.ball),
                "cars": _fixed_rows(self.cars),
            },
            metadata={_HEADER_KEY: json.dumps(header).encode()},
        )
        # one thread: a parser worker process has one core
        options = pa.ipc.IpcWriteOptions(compression=compression, use_threads=False)
        with (
            pa.OSFile(str(path), "wb") as sink,
            pa.ipc.new_file(sink, table.schema, options=options) as writer,
        ):
            writer.write_table(table)

    @classmethod
    def load(cls, path: Path) -> ParsedReplay:
        """Read a frames file of format 3 (its arrays are read-only views of the file's
        buffers) or of format 2 (.npz)."""
        data = Path(path).read_bytes()
        if data.startswith(_ZIP_MAGIC):
            return _load_npz(path)
        try:
            table = pa.ipc.open_file(pa.py_buffer(data)).read_all()
        except pa.ArrowInvalid as error:
            raise ValueError(f"{path}: not a frames file ({error})") from error
        metadata = table.schema.metadata or {}
        header = _checked_header(path, metadata.get(_HEADER_KEY), FRAMES_FORMAT_VERSION)
        n_frames, n_players = table.num_rows, header["n_players"]
        return cls._from_header(
            header,
            time=_column(table, "time", n_frames),
            seconds_remaining=_column(table, "seconds_remaining", n_frames),
            ball=_column(table, "ball", n_frames, len(BALL_FIELDS)),
            cars=_column(table, "cars", n_frames, n_players, len(PLAYER_FIELDS)),
            touches=np.array(header["touches"], dtype=np.int32).reshape(-1, 2),
        )

    @classmethod
    def _from_header(cls, header: dict, **arrays: np.ndarray) -> ParsedReplay:
        return cls(
            replay_id=header["replay_id"],
            fps=header["fps"],
            players=_players_adapter.validate_python(header["players"]),
            goals=_goals_adapter.validate_python(header["goals"]),
            team_size=header["team_size"],
            map_name=header.get("map_name"),  # absent from files written before them
            game_mode=header.get("game_mode"),
            **arrays,
        )


def _float32(array: np.ndarray) -> pa.Array:
    return pa.array(np.ascontiguousarray(array, dtype=np.float32).reshape(-1))


def _fixed_rows(array: np.ndarray) -> pa.FixedSizeListArray:
    """[T, ...] -> T rows, each a fixed-size list of the rest flattened."""
    width = int(np.prod(array.shape[1:]))
    return pa.FixedSizeListArray.from_arrays(_float32(array), width)


def _column(table: pa.Table, name: str, *shape: int) -> np.ndarray:
    array = table.column(name).combine_chunks()
    if isinstance(array, pa.FixedSizeListArray):
        array = array.flatten()
    return array.to_numpy(zero_copy_only=True).reshape(shape)


def _checked_header(path: Path, raw: bytes | None, version: int) -> dict:
    """The JSON header of a frames file that must be of format ``version``."""
    if raw is None:
        raise ValueError(f"{path}: an Arrow file without a frames header")
    header = json.loads(raw)
    if header.get("format_version") != version:
        raise ValueError(f"{path}: frames format {header.get('format_version')} unsupported")
    return header


def _load_npz(path: Path) -> ParsedReplay:
    """A frames file of format 2: a compressed .npz with the header as a JSON byte array."""
    with np.load(path, allow_pickle=False) as data:
        header = _checked_header(path, data["header"].tobytes(), _LEGACY_NPZ_VERSION)
        arrays = ("time", "seconds_remaining", "ball", "cars", "touches")
        return ParsedReplay._from_header(header, **{name: data[name] for name in arrays})


def save_npz(replay: ParsedReplay, path: Path) -> None:
    """Write ``replay`` as a frames file of format 2 (.npz), as this module did before format
    3: for the tests that read such files and for ``bench/frames_store.py``."""
    header = replay.header() | {"format_version": _LEGACY_NPZ_VERSION}
    with path.open("wb") as handle:
        np.savez_compressed(
            handle,
            header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
            time=replay.time,
            seconds_remaining=replay.seconds_remaining,
            ball=replay.ball,
            cars=replay.cars,
            touches=replay.touches.astype(np.int32).reshape(-1, 2),
        )
