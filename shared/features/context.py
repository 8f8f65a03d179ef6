"""Game segments and what the whole replay tells each frame: play on or not, the latest
touch, time since the kickoff, the score. Pure numpy.

A replay is cut into kickoff-to-goal segments. Frames between a goal and the next kickoff (goal
replay, countdown) are not *live*: the model is neither trained nor evaluated on them, and no
impact is credited there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.events import GoalInfo
from shared.frames import ParsedReplay

TOUCH_MEMORY_SECONDS = 10.0  # time-since-touch features saturate here
STILL_SPEED = 1.0  # uu/s: the ball waiting for a kickoff
RESUME_SECONDS = 1.0


@dataclass(frozen=True)
class GameContext:
    """Per-frame, per-team facts derived from the whole replay (not from one frame)."""

    live: np.ndarray  # [T] bool
    touched: np.ndarray  # [T, P] bool
    last_toucher: np.ndarray  # [T] player index of the latest touch so far, -1 before any
    since_touch: np.ndarray  # [T] seconds since that touch
    since_kickoff: np.ndarray  # [T] seconds since the segment's kickoff
    segment_start: np.ndarray  # [T] frame index where the frame's segment (live or not) began
    frames_per_second: float
    goals_for: np.ndarray  # [T, 2] goals team k scored before this frame
    last_touch_time: np.ndarray  # [T] time of the latest touch so far, -inf before any


@dataclass(frozen=True)
class StreamCarry:
    """What the frames a stream has dropped tell about the ones it keeps (see
    :class:`StreamFeaturizer`): the state at the last dropped frame."""

    time: float
    live: bool
    segment_time: float  # when that frame's segment (live or not) began
    last_toucher: int
    last_touch_time: float


def live_frames(
    time: np.ndarray,
    ball: np.ndarray,
    goals: list[GoalInfo],
    carry: StreamCarry | None = None,
    dt: float | None = None,
) -> np.ndarray:
    """[T] bool: play is on. A goal stops play; the next kickoff restarts it.

    At a kickoff the ball waits, still, on its spot and then moves for good; the last still
    frame (the kickoff state) is the segment's first live frame. Moving for good means for
    ``RESUME_SECONDS``: the ball also jumps for a frame or two when it is put back on the spot.
    A replay that does not open with a still ball (a clip) is live from its start; the frames
    a stream kept after dropping older ones (``carry``) go on in the state of the last dropped.
    """
    still = vector_length(ball[:, 3:6], axis=1) < STILL_SPEED
    if dt is None:
        dt = median_step(time)
    needed = max(1, round(RESUME_SECONDS / max(dt, 1e-3)))
    moving = np.concatenate((~still[1:], [False]))  # frame i+1 moves
    index = np.arange(time.shape[0])
    # frames moving from i+1 on, without a stop: up to the next frame that does not move
    stops = np.minimum.accumulate(np.where(moving, time.shape[0], index)[::-1])[::-1]
    kickoffs = np.flatnonzero(still & (stops - index >= needed))
    after = -np.inf if carry is None else carry.time
    events = sorted(
        [(float(time[i]), True) for i in kickoffs]
        + [(g.time, False) for g in goals if g.time > after],
        key=lambda e: e[0],
    )
    live = np.zeros(time.shape[0], dtype=bool)
    state, start = (not bool(still[0])) if carry is None else carry.live, 0
    for moment, resumes in events:
        at = int(np.searchsorted(time, moment, side="left"))
        live[start:at] = state
        state, start = resumes, at
    live[start:] = state
    return live


def game_context(parsed: ParsedReplay, carry: StreamCarry | None = None) -> GameContext:
    n_frames, n_players = parsed.n_frames, len(parsed.players)
    dt = median_step(parsed.time)
    live = live_frames(parsed.time, parsed.ball, parsed.goals, carry, dt)
    touched = np.zeros((n_frames, n_players), dtype=bool)
    touches = np.asarray(parsed.touches, dtype=np.int64).reshape(-1, 2)
    valid = (touches[:, 0] >= 0) & (touches[:, 0] < n_frames) & (touches[:, 1] < n_players)
    touched[touches[valid, 0], touches[valid, 1]] = True
    touched &= live[:, None]
    last_toucher = np.full(n_frames, -1, dtype=np.int64)
    last_time = np.full(n_frames, -np.inf)
    frames, players = np.nonzero(touched)
    if frames.size:
        # one toucher per frame: the highest index wins a (rare) tie within a frame
        latest = np.full(n_frames, -1, dtype=np.int64)
        latest[frames] = players
        index = np.maximum.accumulate(np.where(latest >= 0, np.arange(n_frames), -1))
        seen = index >= 0
        last_toucher[seen] = latest[index[seen]]
        last_time[seen] = parsed.time[index[seen]]
    if carry is not None:
        before = last_toucher < 0
        last_toucher[before], last_time[before] = carry.last_toucher, carry.last_touch_time
    segment_start, changed = _segment_starts(live, carry)
    segment_time = parsed.time[segment_start].copy()
    if carry is not None:
        segment_time[~changed] = carry.segment_time
    goals_for = np.zeros((n_frames, 2), dtype=np.int64)
    for team in (0, 1):
        if times := [g.time for g in parsed.goals if g.team == team]:
            goals_for[:, team] = np.searchsorted(np.sort(times), parsed.time, "left")
    return GameContext(
        live=live,
        touched=touched,
        last_toucher=last_toucher,
        since_touch=np.minimum(parsed.time - last_time, TOUCH_MEMORY_SECONDS),
        since_kickoff=parsed.time - segment_time,
        segment_start=segment_start,
        frames_per_second=fps_of_step(dt, n_frames),
        goals_for=goals_for,
        last_touch_time=last_time,
    )


def _segment_starts(live: np.ndarray, carry: StreamCarry | None) -> tuple[np.ndarray, np.ndarray]:
    """[T] index of the latest frame where play resumed or stopped (0 before any), and [T]
    whether there was one in ``live`` (a stream's first kept frame goes on its carry)."""
    first = True if carry is None else bool(live[0] != carry.live) if live.shape[0] else False
    changes = np.concatenate(([first], live[1:] != live[:-1]))
    return (
        np.maximum.accumulate(np.where(changes, np.arange(live.shape[0]), 0)),
        np.maximum.accumulate(changes) if changes.shape[0] else changes,
    )


def fps_of_step(step: float, n_frames: int) -> float:
    """From the median frame step (10 fps when there are fewer than two frames)."""
    return 1.0 / max(step, 1e-3) if n_frames > 1 else 10.0


def median_step(time: np.ndarray) -> float:
    """The median interval between frames (1 s for fewer than two): ``np.median``'s value,
    without its overhead, which was a fifth of a live stream's context refresh."""
    if time.shape[0] < 2:
        return 1.0
    steps = np.sort(np.diff(time))
    middle = steps.shape[0] // 2
    if steps.shape[0] % 2:
        return float(steps[middle])
    return float((steps[middle - 1] + steps[middle]) / 2)


def vector_length(vectors: np.ndarray, axis: int = -1, keepdims: bool = False) -> np.ndarray:
    """Euclidean length along ``axis``: ``np.linalg.norm``'s exact value (it computes the
    same), without its overhead, which counts on the live path's few rows per call."""
    squares = vectors * vectors
    if keepdims:
        return np.sqrt(np.add.reduce(squares, axis=axis, keepdims=True))
    return np.sqrt(np.add.reduce(squares, axis=axis))
