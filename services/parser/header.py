"""The players' end-of-match stats from a replay file's header (``PlayerStats``). Pure: bytes in.

The native extractor reads the header for the team size, goals and map; the in-game score
points of each player (the scoreboard's "Score") are only wanted by ``rlimpact validate`` as a
baseline, so they are read here, from the header's property list, without decoding the network
frames. A replay without ``PlayerStats`` (some old or private ones) gives no stats.

The header is a list of properties: a name, a type name, a 64-bit size and the value, ended by
a property named ``None``. Arrays hold property lists; values of other types are skipped by
their size.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

HEADER_PREFIX_BYTES = 16  # header size, CRC, major and minor version (u32 each)
NET_VERSION_SINCE = (866, 18)  # (major, minor) from which a net version follows


class HeaderError(ValueError):
    """The bytes are not a replay header this reader understands."""


@dataclass(frozen=True)
class PlayerStats:
    name: str
    team: int
    score: int  # in-game score points
    goals: int
    platform_id: str | None  # "Steam:7656...", as the extractor spells it, when the header has it


class _Reader:
    def __init__(self, data: bytes, offset: int) -> None:
        self.data, self.offset = data, offset

    def take(self, size: int) -> bytes:
        if size < 0 or self.offset + size > len(self.data):
            raise HeaderError("header ends early")
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def unpack(self, fmt: str) -> int:
        (value,) = struct.unpack(fmt, self.take(struct.calcsize(fmt)))
        return value

    def text(self) -> str:
        length = self.unpack("<i")
        if length < 0:
            return self.take(-2 * length).decode("utf-16-le", "replace").rstrip("\0")
        return self.take(length).decode("latin-1").rstrip("\0")


Properties = dict[str, object]


def _properties(reader: _Reader) -> Properties:
    found: Properties = {}
    while (name := reader.text()) != "None":
        kind = reader.text()
        size = reader.unpack("<Q")
        if kind == "ArrayProperty":
            found[name] = [_properties(reader) for _ in range(reader.unpack("<i"))]
        elif kind == "IntProperty":
            found[name] = reader.unpack("<i")
        elif kind in ("StrProperty", "NameProperty"):
            found[name] = reader.text()
        elif kind == "QWordProperty":
            found[name] = reader.unpack("<Q")
        elif kind == "ByteProperty":
            found[name] = _byte_value(reader)
        elif kind == "StructProperty":
            reader.text()  # the struct's type
            found[name] = _properties(reader)
        elif kind == "BoolProperty":
            found[name] = bool(reader.take(1)[0])
        else:
            reader.take(size)
    return found


def _byte_value(reader: _Reader) -> object:
    """An enum's value ("Enum.Value"), or a plain byte (the enum named "None")."""
    enum = reader.text()
    if enum == "None":
        return reader.take(1)[0]
    if enum.startswith("OnlinePlatform_"):  # old replays name the value alone
        return enum
    return f"{enum}.{reader.text()}"


def header_properties(data: bytes) -> Properties:
    """The header's top-level properties (arrays as lists of property dicts)."""
    reader = _Reader(data, 0)
    reader.take(8)  # header size, CRC
    major, minor = reader.unpack("<I"), reader.unpack("<I")
    if major >= NET_VERSION_SINCE[0] and minor >= NET_VERSION_SINCE[1]:
        reader.take(4)
    if not reader.text().startswith("TAGame.Replay_"):
        raise HeaderError("not a Rocket League replay header")
    return _properties(reader)


def player_stats(data: bytes) -> list[PlayerStats]:
    """Each player's row of the header's scoreboard, [] when it has none or cannot be read."""
    try:
        rows = header_properties(data).get("PlayerStats", [])
    except (HeaderError, UnicodeDecodeError, struct.error):
        return []
    if not isinstance(rows, list):
        return []
    return [stats for row in rows if isinstance(row, dict) and (stats := _stats(row))]


def player_stats_of_file(path: Path) -> list[PlayerStats]:
    return player_stats(Path(path).read_bytes())


def _stats(row: Properties) -> PlayerStats | None:
    name, team, score = row.get("Name"), row.get("Team"), row.get("Score")
    if not isinstance(name, str) or team not in (0, 1) or not isinstance(score, int):
        return None
    goals = row.get("Goals")
    return PlayerStats(
        name=name,
        team=int(team),
        score=score,
        goals=goals if isinstance(goals, int) else 0,
        platform_id=_platform_id(row),
    )


def _platform_id(row: Properties) -> str | None:
    platform, online_id = row.get("Platform"), row.get("OnlineID")
    if not isinstance(platform, str) or not isinstance(online_id, int) or not online_id:
        return None
    return f"{platform.rpartition('OnlinePlatform_')[2]}:{online_id}"
