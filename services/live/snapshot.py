"""A match's live state as bytes and back: the values of the ``live.state`` changelog. Pure.

A snapshot holds everything :class:`MatchState` needs to go on exactly as it would have (the
stream's kept frames, the probabilities not credited yet, the running totals, the touch
counters, the latest frame) and the input offset of the last ``live.frames`` record it
reflects. What can be recomputed (the game context) is recomputed on decoding, by the same
function that computed it live, so a restored state featurizes and credits bit for bit as the
lost one would have.

The format (no pickles: a topic is not trusted with code): the length of a JSON header (4
bytes, big-endian), the header (the scalars, and each array's name, dtype and shape), then the
arrays' bytes one after another. A closed match (ended, or forgotten when idle) is a header
alone, ``closed: true``: its frames up to the offset are done.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.live.state import MatchState, Row, Totals
from shared.events import GoalInfo, LiveFrame, LivePlayer, PlayerInfo
from shared.features.context import StreamCarry, game_context
from shared.features.stream import StreamFeaturizer

SNAPSHOT_VERSION = 1
_LENGTH = struct.Struct(">I")
_DTYPES = frozenset({"<f4", "<f8", "<i8", "<i4", "|b1"})


class SnapshotError(ValueError):
    """Bytes that are not a snapshot this code can read."""


@dataclass(frozen=True)
class Snapshot:
    match_id: str
    offset: int  # the last live.frames offset (of the match's partition) reflected
    state: MatchState | None  # None: the match is closed


def encode(state: MatchState) -> bytes:
    """The state after its latest frame (``state.offset``); frames not scored yet would be
    lost, so there must be none."""
    if state.pending or state.rows or state.new_goals:
        raise ValueError(f"match {state.match_id}: frames not scored yet cannot be snapshotted")
    arrays: dict[str, np.ndarray] = {"p_score": state.p_score}
    header: dict[str, Any] = {
        "version": SNAPSHOT_VERSION,
        "match_id": state.match_id,
        "offset": state.offset,
        "closed": False,
        "players": [p.model_dump(mode="json") for p in state.players],
        "credit_from": state.credit_from,
        "pace_from": state.pace_from,
        "totals": {
            k: [t.offence, t.defence, t.touches, t.n, t.pace_units] for k, t in state.totals.items()
        },
        "latest": state.latest.model_dump_json() if state.latest is not None else None,
        "score": list(state.score) if state.score is not None else None,
        "touch_counts": state.touch_counts,
        "started_at": state.started_at,
        "stream": _stream_header(state.stream, arrays),
        "last_row": None,
    }
    if state.latest_probabilities is not None:
        arrays["latest_probabilities"] = state.latest_probabilities
    if (row := state.last_row) is not None:
        header["last_row"] = {"time": row.time, "remaining": row.seconds_remaining}
        header["last_row"]["touched"] = row.touched
        arrays["last_ball"], arrays["last_cars"] = row.ball, row.cars
    return _archive(header, arrays)


def encode_closed(match_id: str, offset: int) -> bytes:
    header = {"version": SNAPSHOT_VERSION, "match_id": match_id, "offset": offset, "closed": True}
    return _archive(header, {})


def decode(raw: bytes) -> Snapshot:
    try:
        header, arrays = _unpack(raw)
        if header.get("version") != SNAPSHOT_VERSION:
            raise SnapshotError(f"snapshot version {header.get('version')!r} is not known")
        if header["closed"]:
            return Snapshot(header["match_id"], header["offset"], None)
        return Snapshot(header["match_id"], header["offset"], _state(header, arrays))
    except SnapshotError:
        raise
    except (ValueError, KeyError, TypeError, struct.error) as error:
        raise SnapshotError(f"not a live state snapshot: {error}") from error


def _archive(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    blobs = [np.ascontiguousarray(a) for a in arrays.values()]
    header["arrays"] = [[n, a.dtype.str, a.shape] for n, a in zip(arrays, blobs, strict=True)]
    text = json.dumps(header).encode()
    return b"".join([_LENGTH.pack(len(text)), text, *(a.tobytes() for a in blobs)])


def _unpack(raw: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    (length,) = _LENGTH.unpack_from(raw)
    header = json.loads(raw[_LENGTH.size : _LENGTH.size + length])
    arrays, at = {}, _LENGTH.size + length
    for name, dtype, shape in header.pop("arrays"):
        if dtype not in _DTYPES:
            raise SnapshotError(f"array {name!r} has an unexpected dtype {dtype!r}")
        count = int(np.prod(shape))
        array = np.frombuffer(raw, dtype=dtype, count=count, offset=at).reshape(shape)
        arrays[name] = array.copy()  # writable, and not a view of the message
        at += array.nbytes
    if at != len(raw):
        raise SnapshotError(f"{len(raw) - at} bytes after the last array")
    return header, arrays


_STREAM_ARRAYS = ("time", "seconds_remaining", "ball", "cars", "touches")


def _stream_header(stream: StreamFeaturizer | None, arrays: dict[str, np.ndarray]) -> Any:
    if stream is None:
        return None
    for name in _STREAM_ARRAYS:
        arrays[f"stream_{name}"] = getattr(stream, name)
    carry = stream.carry
    return {
        "stream_id": stream.stream_id,
        "players": [p.model_dump(mode="json") for p in stream.players],
        "team_size": stream.team_size,
        "goals": [g.model_dump(mode="json") for g in stream.goals],
        "carry": carry.__dict__ if carry is not None else None,
        "first": stream.first,
        "dirty_from": stream.dirty_from,
    }


def _stream(header: Any, arrays: dict[str, np.ndarray]) -> StreamFeaturizer | None:
    if header is None:
        return None
    players = [PlayerInfo.model_validate(p) for p in header["players"]]
    stream = StreamFeaturizer(header["stream_id"], players, header["team_size"])
    for name in _STREAM_ARRAYS:
        setattr(stream, name, arrays[f"stream_{name}"])
    stream.goals = [GoalInfo.model_validate(g) for g in header["goals"]]
    stream.carry = StreamCarry(**header["carry"]) if header["carry"] is not None else None
    stream.first, stream.dirty_from = header["first"], header["dirty_from"]
    # what push() and drop() compute from the same arrays, the same way
    stream.context = game_context(stream.parsed(), stream.carry)
    stream.frames_per_second = stream.context.frames_per_second
    return stream


def _unsettled(stream: StreamFeaturizer | None) -> int:
    return stream.first + stream.settled() if stream is not None else 0


def _state(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> MatchState:
    state = MatchState(header["match_id"])
    state.offset = header["offset"]
    state.players = [LivePlayer.model_validate(p) for p in header["players"]]
    state.stream = _stream(header["stream"], arrays)
    state.p_score = arrays["p_score"]
    state.latest_probabilities = arrays.get("latest_probabilities")
    state.credit_from = header["credit_from"]
    # snapshots from before pace was credited: its count starts at the first frame not settled
    state.pace_from = header.get("pace_from", _unsettled(state.stream))
    state.totals = {k: Totals(*values) for k, values in header["totals"].items()}
    if header["latest"] is not None:
        state.latest = LiveFrame.model_validate_json(header["latest"])
    state.score = tuple(header["score"]) if header["score"] is not None else None
    state.touch_counts = header["touch_counts"]
    state.started_at = header["started_at"]
    if (row := header["last_row"]) is not None:
        ball, cars = arrays["last_ball"], arrays["last_cars"]
        state.last_row = Row(row["time"], row["remaining"], ball, cars, row["touched"])
    return state
