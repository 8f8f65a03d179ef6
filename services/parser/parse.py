"""Replay file -> :class:`ParsedReplay`, on the native extractor (``native/``, boxcars + Rust).

Pure: no Kafka, no database. Used by the parser service and by the offline CLI.

``rlimpact_native.extract`` decodes the file with boxcars (CRC checked), walks the network
frames tracking ball, cars, players and car components, and resamples at ``fps`` by
forward-filling the latest state at or before each sample time. Goals take the time of the
scoring team's score increment; ball touches are detected at the full network rate (the rule is
in ``native/src/touches.rs``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rlimpact_native

from shared.events import GoalInfo, PlayerInfo
from shared.frames import BALL_FIELDS, PLAYER_FIELDS, ParsedReplay
from shared.scope import game_mode

_NATIVE_WIDTHS = (rlimpact_native.BALL_WIDTH, rlimpact_native.CAR_WIDTH)
if (len(BALL_FIELDS), len(PLAYER_FIELDS)) != _NATIVE_WIDTHS:
    raise ImportError("rlimpact_native does not match shared/frames.py: run deploy/setup.sh")


# Rules the extractor itself enforces, since without them there are no frames to build; the
# other validation rules are in validate.py. Keyed by the start of the extractor's message.
EXTRACTION_RULES = {"no network frames": "network_frames", "no ball": "ball_present"}


class ReplayParseError(Exception):
    """The replay cannot be turned into frames; ``reason`` says why, for the dead-letter record.

    ``rule`` names the validation rule the replay broke, when it decoded but broke one.
    """

    def __init__(self, reason: str, rule: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.rule = rule


def parse_replay_file(path: Path, replay_id: str, fps: float = 10.0) -> ParsedReplay:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ReplayParseError(f"unreadable replay file: {error}") from error
    return parse_replay_bytes(data, replay_id, fps)


def parse_replay_bytes(data: bytes, replay_id: str, fps: float = 10.0) -> ParsedReplay:
    try:
        out = rlimpact_native.extract(data, fps)
    except rlimpact_native.DecodeError as error:
        raise ReplayParseError(f"undecodable replay: {error}") from error
    except rlimpact_native.ContentError as error:
        message = str(error)
        rule = next((r for start, r in EXTRACTION_RULES.items() if message.startswith(start)), None)
        if rule is None:
            raise ReplayParseError(f"unusable replay: {message}") from error
        raise ReplayParseError(f"validation rule '{rule}' failed: {message}", rule) from error
    return _to_parsed(replay_id, fps, out)


def _array(raw: bytearray, dtype: str, *shape: int) -> np.ndarray:
    """A writable native-endian array of the extension's little-endian bytes (no copy on a
    little-endian machine)."""
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


def _to_parsed(replay_id: str, fps: float, out: dict) -> ParsedReplay:
    n_frames, n_players = out["n_frames"], out["n_players"]
    players = [
        PlayerInfo(index=i, name=name, team=team, platform_id=platform_id, is_bot=is_bot)
        for i, (name, team, platform_id, is_bot) in enumerate(out["players"])
    ]
    goals = [
        GoalInfo(time=time, team=team, scorer=scorer) for time, team, scorer, _ in out["goals"]
    ]
    team_size = out["team_size"] or max(1, max(sum(p.team == t for p in players) for t in (0, 1)))
    return ParsedReplay(
        replay_id=replay_id,
        fps=fps,
        time=_array(out["time"], "<f4", n_frames),
        seconds_remaining=_array(out["seconds_remaining"], "<f4", n_frames),
        ball=_array(out["ball"], "<f4", n_frames, len(BALL_FIELDS)),
        cars=_array(out["cars"], "<f4", n_frames, n_players, len(PLAYER_FIELDS)),
        players=players,
        goals=goals,
        team_size=int(team_size),
        touches=_array(out["touches"], "<i4", len(out["touches"]) // 8, 2),
        map_name=out["map_name"],
        game_mode=game_mode(out["mode_objects"]),
    )
