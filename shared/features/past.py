"""The recent past of a segment as each team sees it: where the ball was, where it stayed, who
touched it. Pure numpy."""

from __future__ import annotations

import functools

import numpy as np

from shared.features.context import GameContext
from shared.features.scales import POS_SCALE, THIRD_Y, TOUCH_COUNT_SCALE
from shared.frames import BALL_FIELD, ParsedReplay


def team_past(
    parsed: ParsedReplay, teams: np.ndarray, context: GameContext, rows: np.ndarray
) -> np.ndarray:
    """[2, R, 12] the recent past up to the frames ``rows`` as each team sees it: the ball
    (1 s and 2 s ago, its mean y over 5 s and 10 s, the share of the last 10 s in either
    third) and touches by each team over 5 s; none of it reaches back before the frame's
    segment began.

    Computed once, for team 0: team 1 sees the pitch turned round, so its numbers are team
    0's with x and y negated and the thirds and teams swapped (exactly: negation is exact, in
    float64 before the cast to float32 as after it).
    """
    result = np.zeros((2, rows.shape[0], 12), dtype=np.float32)
    if not rows.shape[0]:
        return result
    fps, start = context.frames_per_second, context.segment_start[rows]
    end = rows + 1
    windows, back = _frames_back(fps)
    begins = np.maximum(end[:, None] - windows, start[:, None])  # [R, 2]: 5 s and 10 s back
    # the windows read frames [first, stop)
    first, stop = int(np.minimum.reduce(begins[:, 1])), int(np.maximum.reduce(end))
    y = parsed.ball[first:stop, BALL_FIELD["y"]]
    touched = context.touched[first:stop]
    series = np.empty((stop - first, 5))
    series[:, 0], series[:, 1], series[:, 2] = y, y > THIRD_Y, y < -THIRD_Y
    series[:, 3] = np.logical_or.reduce(touched[:, teams == 0], axis=1)
    series[:, 4] = np.logical_or.reduce(touched[:, teams == 1], axis=1)
    cumulative = np.zeros((series.shape[0] + 1, series.shape[1]))
    np.cumsum(series, axis=0, out=cumulative[1:])
    at_end = cumulative[end - first]
    # [R, 5] each column's sum over 5 s and 10 s back
    last_5s, last_10s = (
        at_end - cumulative[begins[:, 0] - first],
        at_end - cumulative[begins[:, 1] - first],
    )
    n_5s, n_10s = end - begins[:, 0], end - begins[:, 1]
    mean_y = np.stack([last_5s[:, 0] / n_5s, last_10s[:, 0] / n_10s], axis=1) / POS_SCALE
    thirds = np.stack([last_10s[:, 1] / n_10s, last_10s[:, 2] / n_10s], axis=1)
    touches = last_5s[:, 3:5] / TOUCH_COUNT_SCALE
    # [R, 2, 3] the ball 1 s and 2 s ago
    ago = parsed.ball[np.maximum(rows[:, None] - back, start[:, None]), 0:3] / POS_SCALE
    past = (ago.reshape(-1, 6), mean_y, thirds, touches)
    result[0] = np.concatenate(past, axis=1, dtype=np.float32, casting="unsafe")
    np.multiply(result[0][:, TURNED_ORDER], TURNED_SIGN, out=result[1])
    return result


# Team 1's columns from team 0's: x and y negated, the thirds and the teams' touches swapped
TURNED_ORDER = np.array([0, 1, 2, 3, 4, 5, 6, 7, 9, 8, 11, 10])
TURNED_SIGN = np.array([-1, -1, 1, -1, -1, 1, -1, -1, 1, 1, 1, 1], dtype=np.float32)


@functools.lru_cache(maxsize=64)
def _frames_back(fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Frames in 5 s and 10 s (at least one), and in 1 s and 2 s, at ``fps``."""
    windows = np.array([max(1, round(s * fps)) for s in (5.0, 10.0)])
    back = np.array([round(s * fps) for s in (1.0, 2.0)])
    for array in (windows, back):
        array.flags.writeable = False
    return windows, back
