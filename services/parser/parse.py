"""Replay file -> :class:`ParsedReplay`, on boxcars through subtr-actor's ndarray collector.

Pure: no Kafka, no database. Used by the parser service and by the offline CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import subtr_actor

from shared.events import GoalInfo, PlayerInfo
from shared.frames import ParsedReplay

GLOBAL_ADDERS = ("BallRigidBody", "CurrentTime", "SecondsRemaining")
PLAYER_ADDERS = ("PlayerRigidBody", "PlayerBoost", "PlayerAnyJump", "PlayerDemolishedBy")
_BALL_COLUMNS = [0, 1, 2, 6, 7, 8]  # position and linear velocity of the rigid body
_TIME, _SECONDS_REMAINING = 12, 13
_N_GLOBAL = 14
# rigid body: position 0-2, rotation 3-5, linear velocity 6-8, angular velocity 9-11
_CAR_COLUMNS = [0, 1, 2, 3, 4, 5, 6, 7, 8]
_BOOST, _JUMP, _DEMOLISHED_BY = 12, 13, 14
_N_PLAYER = 15
MAX_BOOST_RAW = 255.0
# A goal freezes the ball in place until the next kickoff; a freeze this deep in a half is a goal.
GOAL_FREEZE_MIN_ABS_Y = 4000.0


class ReplayParseError(Exception):
    """The replay cannot be turned into frames; ``reason`` says why, for the dead-letter record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_replay_file(path: Path, replay_id: str, fps: float = 10.0) -> ParsedReplay:
    try:
        info, array = subtr_actor.get_ndarray_with_info_from_replay_filepath(
            str(path),
            global_feature_adders=list(GLOBAL_ADDERS),
            player_feature_adders=list(PLAYER_ADDERS),
            fps=fps,
            dtype="float32",
        )
    except Exception as error:  # the extension raises plain Exceptions with boxcars' message
        raise ReplayParseError(f"undecodable replay: {error}") from error
    meta = info["replay_meta"]
    players = _players(meta)
    return _to_parsed(replay_id, fps, array, players, meta)


def _to_parsed(
    replay_id: str, fps: float, array: np.ndarray, players: list[PlayerInfo], meta: dict[str, Any]
) -> ParsedReplay:
    n_players = (array.shape[1] - _N_GLOBAL) // _N_PLAYER
    if array.shape[0] == 0:
        raise ReplayParseError("replay has no frames")
    if n_players == 0 or n_players != len(players):
        raise ReplayParseError(
            f"player columns ({n_players}) do not match the replay's players ({len(players)})"
        )
    array = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
    raw_cars = array[:, _N_GLOBAL:].reshape(array.shape[0], n_players, _N_PLAYER)
    cars = np.concatenate(
        [
            raw_cars[:, :, _CAR_COLUMNS],
            raw_cars[:, :, [_BOOST]] / MAX_BOOST_RAW,
            (raw_cars[:, :, [_JUMP]] > 0).astype(np.float32),
            (raw_cars[:, :, [_DEMOLISHED_BY]] >= 0).astype(np.float32),
        ],
        axis=2,
    ).astype(np.float32)
    time = array[:, _TIME].copy()
    ball = array[:, _BALL_COLUMNS].copy()
    headers = dict(meta.get("all_headers", []))
    return ParsedReplay(
        replay_id=replay_id,
        fps=fps,
        time=time,
        seconds_remaining=array[:, _SECONDS_REMAINING].copy(),
        ball=ball,
        cars=cars,
        players=players,
        goals=align_goals(header_goals(headers), goal_candidates(time, ball)),
        team_size=int(headers.get("TeamSize", max(1, n_players // 2))),
    )


def _players(meta: dict[str, Any]) -> list[PlayerInfo]:
    """Players in the order of the ndarray's column blocks: team zero, then team one."""
    players: list[PlayerInfo] = []
    for team, key in ((0, "team_zero"), (1, "team_one")):
        for entry in meta.get(key) or []:
            stats = entry.get("stats") or {}
            players.append(
                PlayerInfo(
                    index=len(players),
                    name=str(entry.get("name") or f"player{len(players)}"),
                    team=team,
                    platform_id=_platform_id(entry.get("remote_id")),
                    is_bot=bool(stats.get("bBot", False)),
                )
            )
    return players


def _platform_id(remote_id: Any) -> str | None:
    if isinstance(remote_id, dict) and len(remote_id) == 1:
        ((platform, value),) = remote_id.items()
        return f"{platform}:{value}"
    return None if remote_id is None else str(remote_id)


def header_goals(headers: dict[str, Any]) -> list[tuple[int, str | None]]:
    """(scoring team, scorer name) per goal, in order, from the replay header."""
    return [
        (int(goal["PlayerTeam"]), goal.get("PlayerName"))
        for goal in headers.get("Goals") or []
        if goal.get("PlayerTeam") in (0, 1)
    ]


def goal_candidates(time: np.ndarray, ball: np.ndarray) -> list[tuple[float, int]]:
    """(time, scoring team) where the ball freezes deep in a half, plus a replay ending in a goal.

    The sampled ball stops dead (zero velocity, fixed position) from the goal until the next
    kickoff. The half tells who scored: team 0 attacks +y.
    """
    velocity = ball[:, 3:6]
    frozen = np.all(velocity == 0.0, axis=1)
    starts = frozen & ~np.r_[True, frozen[:-1]] & (np.abs(ball[:, 1]) > GOAL_FREEZE_MIN_ABS_Y)
    candidates = [(float(time[i]), 0 if ball[i, 1] > 0 else 1) for i in np.flatnonzero(starts)]
    last_y = float(ball[-1, 1])
    if abs(last_y) > GOAL_FREEZE_MIN_ABS_Y and not frozen[-1]:
        candidates.append((float(time[-1]), 0 if last_y > 0 else 1))
    return candidates


def align_goals(
    header: list[tuple[int, str | None]], candidates: list[tuple[float, int]]
) -> list[GoalInfo]:
    """Give each header goal the time of the next unused candidate of the same team.

    Header goals with no matching candidate are left out: labels are built only from goals
    whose time is known.
    """
    goals: list[GoalInfo] = []
    cursor = 0
    for team, scorer in header:
        match = next((i for i in range(cursor, len(candidates)) if candidates[i][1] == team), None)
        if match is None:
            continue
        goals.append(GoalInfo(time=candidates[match][0], team=team, scorer=scorer))
        cursor = match + 1
    return goals
