"""The recent past of a segment as each team sees it: where the ball was, where it stayed, who
touched it. Pure numpy."""

from __future__ import annotations

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
    0's with x and y negated and the thirds and teams swapped (exactly: negation is exact).
    """
    result = np.zeros((2, rows.shape[0], 12), dtype=np.float32)
    if not rows.shape[0]:
        return result
    fps, start = context.frames_per_second, context.segment_start[rows]
    end = rows + 1
    lags = np.array([max(1, round(s * fps)) for s in (5.0, 10.0)])
    begins = np.maximum(end[:, None] - lags, start[:, None])  # [R, 2]: 5 s and 10 s back
    first, stop = int(begins[:, 1].min()), int(end.max())  # the windows read [first, stop)
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
    mean_y = np.stack([last_5s[:, 0] / n_5s, last_10s[:, 0] / n_10s], axis=1)
    attacking, defending = last_10s[:, 1] / n_10s, last_10s[:, 2] / n_10s
    touches = last_5s[:, 3:5] / TOUCH_COUNT_SCALE
    back = np.array([round(s * fps) for s in (1.0, 2.0)])
    ago = parsed.ball[np.maximum(rows[:, None] - back, start[:, None]), 0:3] / POS_SCALE
    one, two = ago[:, 0], ago[:, 1]
    turned = np.array([-1.0, -1.0, 1.0], dtype=np.float32)
    for team, (thirds, by_team, sign) in enumerate(
        (((attacking, defending), touches, 1.0), ((defending, attacking), touches[:, ::-1], -1.0))
    ):
        past = (
            one * turned if team else one,
            two * turned if team else two,
            sign * mean_y / POS_SCALE,
            np.stack(thirds, axis=1),
            by_team,
        )
        result[team] = np.concatenate(past, axis=1, dtype=np.float32, casting="unsafe")
    return result
