"""The stream featurizer: the feature rows of a live match's frames as they come, the rows
the batch featurizer gives for the same frames."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from shared.events import GoalInfo, PlayerInfo
from shared.features.context import (
    RESUME_SECONDS,
    GameContext,
    StreamCarry,
    fps_of_step,
    game_context,
    median_step,
)
from shared.features.rows import feature_rows
from shared.frames import BALL_FIELD, PLAYER_FIELD, ParsedReplay

KEEP_SECONDS = 12.0  # the longest look back (10 s) plus the kickoff look ahead, with margin
DROP_SECONDS = 2.0


class StreamFeaturizer:
    """The features of a stream of frames (a live match) as they come: the rows
    :func:`featurize` gives for the same frames, at a cost that grows with the new frames.

    It keeps the last ``KEEP_SECONDS`` of frames and, in a :class:`StreamCarry`, what the
    dropped ones tell (the segment's start, the latest touch). A kickoff is recognised once the
    ball has moved for ``RESUME_SECONDS``: the frames since then turn live, and their rows are
    out of date again (``dirty_from``).
    """

    def __init__(self, stream_id: str, players: list[PlayerInfo], team_size: int) -> None:
        self.stream_id, self.players, self.team_size = stream_id, players, team_size
        self.teams = np.array([p.team for p in players])
        n = len(players)
        self.time = np.zeros(0, dtype=np.float32)
        self.seconds_remaining = np.zeros(0, dtype=np.float32)
        self.ball = np.zeros((0, len(BALL_FIELD)), dtype=np.float32)
        self.cars = np.zeros((0, n, len(PLAYER_FIELD)), dtype=np.float32)
        self.touches = np.zeros((0, 2), dtype=np.int64)  # (frame in the buffer, player)
        self.goals: list[GoalInfo] = []
        self.carry: StreamCarry | None = None
        self.context: GameContext | None = None
        self.first = 0  # stream index of the buffer's frame 0
        self.dirty_from = 0  # buffer index of the first frame whose row is out of date
        self.frames_per_second = fps_of_step(median_step(self.time), self.n_frames)

    @property
    def n_frames(self) -> int:
        return int(self.time.shape[0])

    def push(
        self,
        time: np.ndarray,
        seconds_remaining: np.ndarray,
        ball: np.ndarray,
        cars: np.ndarray,
        touches: np.ndarray,
        goals: list[GoalInfo],
    ) -> None:
        """Append k frames; ``touches`` [K, 2] (frame among the k, player); ``goals`` new."""
        n = self.n_frames
        self.time = np.concatenate((self.time, np.asarray(time, dtype=np.float32)))
        self.seconds_remaining = np.concatenate(
            (self.seconds_remaining, np.asarray(seconds_remaining, dtype=np.float32))
        )
        self.ball = np.concatenate([self.ball, ball]).astype(np.float32, copy=False)
        self.cars = np.concatenate([self.cars, cars]).astype(np.float32, copy=False)
        touches = np.asarray(touches, dtype=np.int64).reshape(-1, 2) + np.array([n, 0])
        self.touches = np.concatenate([self.touches, touches])
        self.goals.extend(goals)
        before = self.context.live if self.context is not None else np.zeros(0, dtype=bool)
        self.context = game_context(self.parsed(), self.carry)
        self.frames_per_second = self.context.frames_per_second
        revised = np.flatnonzero(before != self.context.live[:n])
        self.dirty_from = min(self.dirty_from, n, int(revised[0]) if revised.size else n)

    def parsed(self) -> ParsedReplay:
        return ParsedReplay(
            replay_id=self.stream_id,
            fps=self.frames_per_second,
            time=self.time,
            seconds_remaining=self.seconds_remaining,
            ball=self.ball,
            cars=self.cars,
            players=self.players,
            goals=self.goals,
            team_size=self.team_size,
            touches=self.touches,
        )

    def settled(self) -> int:
        """Buffer frames before this one are not revised any more (their live flag is known)."""
        needed = max(1, round(RESUME_SECONDS * self.frames_per_second))
        return max(0, self.n_frames - needed - 1)

    def drop(self, keep_from: int) -> None:
        """Forget the frames before buffer index ``keep_from``, if older than KEEP_SECONDS; a
        few seconds at a time, as that costs as much as a push."""
        assert self.context is not None
        keep = round(KEEP_SECONDS * self.frames_per_second)
        cut = min(keep_from, self.n_frames - keep, self.dirty_from, self.settled())
        if cut < round(DROP_SECONDS * self.frames_per_second):
            return
        ctx, last = self.context, cut - 1
        self.carry = StreamCarry(
            time=float(self.time[last]),
            live=bool(ctx.live[last]),
            segment_time=float(self.time[last] - ctx.since_kickoff[last]),
            last_toucher=int(ctx.last_toucher[last]),
            last_touch_time=float(ctx.last_touch_time[last]),
        )
        self.time, self.seconds_remaining = self.time[cut:], self.seconds_remaining[cut:]
        self.ball, self.cars = self.ball[cut:], self.cars[cut:]
        self.touches = self.touches[self.touches[:, 0] >= cut] - np.array([cut, 0])
        self.context = game_context(self.parsed(), self.carry)
        self.frames_per_second = self.context.frames_per_second
        self.first += cut
        self.dirty_from -= cut


def stream_rows(streams: list[StreamFeaturizer]) -> list[np.ndarray]:
    """Each stream's rows [k, P, F] from its ``dirty_from`` to its end, which are then up to
    date. Streams of one team layout and frame rate are featurized together, in one call."""
    groups: dict[tuple, list[int]] = {}
    for i, stream in enumerate(streams):
        fps = stream.frames_per_second
        lags = tuple(round(s * fps) for s in (1.0, 2.0, 5.0, 10.0))
        groups.setdefault((tuple(stream.teams), stream.team_size, lags), []).append(i)
    result: list[np.ndarray] = [np.zeros(0)] * len(streams)
    for members in groups.values():
        chosen = [streams[i] for i in members]
        rows = feature_rows(*_joined(chosen))
        offset = 0
        for i, stream in zip(members, chosen, strict=True):
            k = stream.n_frames - stream.dirty_from
            result[i] = rows[offset : offset + k]
            stream.dirty_from = stream.n_frames
            offset += k
    return result


def _joined(streams: list[StreamFeaturizer]) -> tuple[ParsedReplay, GameContext, np.ndarray]:
    """Streams end to end as one table (their windows do not overlap: each history starts at
    its own frame 0, the segment start of its first frames), and the rows out of date."""
    if len(streams) == 1:  # most polls of a live service: nothing to join
        only = streams[0]
        assert only.context is not None
        return only.parsed(), only.context, np.arange(only.dirty_from, only.n_frames)
    contexts = [s.context for s in streams]
    assert all(c is not None for c in contexts)
    offsets = np.cumsum([0] + [s.n_frames for s in streams])

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(c, name) for c in contexts])

    first = streams[0]
    parsed = replace(
        first.parsed(),
        time=np.concatenate([s.time for s in streams]),
        seconds_remaining=np.concatenate([s.seconds_remaining for s in streams]),
        ball=np.concatenate([s.ball for s in streams]),
        cars=np.concatenate([s.cars for s in streams]),
    )
    context = GameContext(
        live=cat("live"),
        touched=cat("touched"),
        last_toucher=cat("last_toucher"),
        since_touch=cat("since_touch"),
        since_kickoff=cat("since_kickoff"),
        segment_start=np.concatenate(
            [c.segment_start + o for c, o in zip(contexts, offsets, strict=False)]  # type: ignore[union-attr]
        ),
        frames_per_second=first.frames_per_second,
        goals_for=cat("goals_for"),
        last_touch_time=cat("last_touch_time"),
    )
    rows = np.concatenate(
        [np.arange(s.dirty_from, s.n_frames) + o for s, o in zip(streams, offsets, strict=False)]
    )
    return parsed, context, rows
