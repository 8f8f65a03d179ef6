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
    begin_5s, begin_10s = (np.maximum(end - max(1, round(s * fps)), start) for s in (5.0, 10.0))
    first = int(begin_10s.min())  # the windows' values: frames [first, end.max())
    y = parsed.ball[first : int(end.max()), BALL_FIELD["y"]]
    touched = context.touched[first : int(end.max())]
    series = np.stack(
        [
            y,
            y > THIRD_Y,
            y < -THIRD_Y,
            touched[:, teams == 0].any(axis=1),
            touched[:, teams == 1].any(axis=1),
        ],
        axis=1,
    ).astype(np.float64)
    cumulative = np.concatenate((np.zeros((1, series.shape[1])), np.cumsum(series, axis=0)))

    def total(column: int, begin: np.ndarray) -> np.ndarray:
        return cumulative[end - first, column] - cumulative[begin - first, column]

    def ago(seconds: float) -> np.ndarray:
        return parsed.ball[np.maximum(rows - round(seconds * fps), start), 0:3] / POS_SCALE

    n_5s, n_10s = end - begin_5s, end - begin_10s
    mean_y = np.stack([total(0, begin_5s) / n_5s, total(0, begin_10s) / n_10s], axis=1)
    attacking, defending = total(1, begin_10s) / n_10s, total(2, begin_10s) / n_10s
    touches = [total(k, begin_5s) / TOUCH_COUNT_SCALE for k in (3, 4)]
    one, two = ago(1.0), ago(2.0)
    turned = np.array([-1.0, -1.0, 1.0], dtype=np.float32)
    for team, (thirds, by_team, sign) in enumerate(
        (((attacking, defending), touches, 1.0), ((defending, attacking), touches[::-1], -1.0))
    ):
        past = (
            one * turned if team else one,
            two * turned if team else two,
            sign * mean_y / POS_SCALE,
            np.stack([*thirds, *by_team], axis=1),
        )
        result[team] = np.concatenate([np.asarray(c, dtype=np.float32) for c in past], axis=1)
    return result
