"""Per-match live state and live scoring. Pure: no Kafka, no database.

Each match is a stream of frames shaped like a parsed replay (``shared/frames.py``), rebuilt
from the live feed: velocities the feed does not send are estimated by finite differences of
successive positions (scaled to the reported speed when the feed gives one); a car with no
location keeps its last one, marked demolished; goals come from the score going up and ball
touches from the players' touch counters going up.

New frames are featurized incrementally (:class:`StreamFeaturizer`: the rows
:func:`featurize` gives for the same frames, at a cost in proportion to the new frames) and
scored with the replays' :class:`ImpactModel`, one ONNX call for the new rows of all matches.

Impact is the replay scorer's, with the same functions (``shared/impact.py``): a touch
is credited once, when the frame before the next touch (or the goal, or the end of play after
it) is known and settled (a kickoff is recognised a second late), a frame's pace once it
is settled, and each player's credits add up to a running total. On the same frames it is
the replay scorer's impact (``tests/unit/test_bridge_live.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from shared.events import (
    GoalInfo,
    LiveFrame,
    LivePlayer,
    PlayerInfo,
)
from shared.features.blocks import CAR_VEL, car_speed
from shared.features.stream import StreamFeaturizer
from shared.features.table import FeatureTable
from shared.frames import BALL_FIELDS, PLAYER_FIELD, PLAYER_FIELDS
from shared.impact import (
    DEMOLISHED,
    IMPACT_SCALE,
    TouchCredit,
    credit_touches,
    pace_credit,
    pace_per_frame,
    team_probability,
)
from shared.model import ImpactModel

# the order in which _row and _car write a frame's numbers
_BALL_ROW = ("x", "y", "z", "vx", "vy", "vz")
_CAR_ROW = (
    "x",
    "y",
    "z",
    "roll",
    "pitch",
    "yaw",
    "vx",
    "vy",
    "vz",
    "boost",
    "jumping",
    "demolished",
)
assert _BALL_ROW == BALL_FIELDS and _CAR_ROW == PLAYER_FIELDS, "shared/frames.py layout changed"

PACE_UNIT = 1e-9  # impact points
MAX_BALL_SPEED = 6000.0  # uu/s
MAX_CAR_SPEED = 2300.0
MIN_DT = 1 / 240  # seconds: closer frames give no usable finite difference
DEFAULT_SECONDS_REMAINING = 300.0


@dataclass(frozen=True)
class ScoringModel:
    model: ImpactModel
    model_id: int | None  # None: the shipped default model
    version: str


@dataclass
class Totals:
    offence: float = 0.0  # x100, summed over the player's credited touches
    defence: float = 0.0
    touches: int = 0
    n: int = 0  # frames scored
    # x100 over the settled frames, in PACE_UNIT steps: an integer sum, so the total does not
    # depend on how the frames were grouped into polls (a restored state's are not the lost
    # one's)
    pace_units: int = 0

    @property
    def pace(self) -> float:
        return self.pace_units * PACE_UNIT


@dataclass
class Row:
    """One frame of a match, in ``shared/frames.py`` layout."""

    time: float
    seconds_remaining: float
    ball: np.ndarray  # [6]
    cars: np.ndarray  # [P, 12]
    touched: list[int]  # columns of the players who touched the ball in this frame


@dataclass
class MatchState:
    match_id: str
    players: list[LivePlayer] = field(default_factory=list)  # the column order of ``cars``
    stream: StreamFeaturizer | None = None  # the match's frames so far (the recent ones)
    p_score: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # [stream frame, team]
    latest_probabilities: np.ndarray | None = None  # [P, 2] of the newest frame
    credit_from: int = 0  # stream frame of the first touch not credited yet
    pace_from: int = 0  # stream frame of the first frame whose pace is not counted yet
    totals: dict[str, Totals] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)  # new since the last update
    pending: list[LiveFrame] = field(default_factory=list)  # their frames
    new_goals: list[GoalInfo] = field(default_factory=list)
    last_row: Row | None = None
    latest: LiveFrame | None = None
    score: tuple[int, int] | None = None  # (blue, orange) at the latest frame
    touch_counts: dict[str, int] = field(default_factory=dict)
    started_at: float | None = None  # receipt time of the first frame (when no game time)
    last_seen: float = 0.0
    # Where the state stands in its input: the live.frames partition of the match, the offset
    # of the last record it reflects, and of the first one since its last snapshot (-1: none);
    # when the next snapshot is due (see services/live/changelog.py).
    partition: int = -1
    offset: int = -1
    unsaved_from: int = -1
    snapshot_due: float = 0.0

    @property
    def layout(self) -> tuple[int, ...]:
        return tuple(p.team for p in self.players)

    def add(self, frame: LiveFrame) -> str | None:
        """Append a frame to the pending ones; the reason it cannot be scored, if so."""
        self.latest = frame
        if frame.ball is None or not any(p.has_location for p in frame.players):
            return "no_locations"
        players = sorted(frame.players, key=lambda p: (p.team, p.id))
        if [p.id for p in players] != [p.id for p in self.players]:
            # Someone joined or left: a new stream (the running totals stay, by player id; a
            # touch not credited yet is lost).
            self.restart(players)
        row = self._row(frame, players)
        self._count_goals(frame, row.time)
        self.rows.append(row)
        self.last_row = row
        self.pending.append(frame)
        return None

    def restart(self, players: list[LivePlayer]) -> None:
        self.players, self.stream, self.rows, self.pending = players, None, [], []
        self.last_row, self.new_goals, self.credit_from, self.pace_from = None, [], 0, 0

    def _count_goals(self, frame: LiveFrame, time: float) -> None:
        score = (frame.blue_goals, frame.orange_goals)
        if self.score is not None:
            for team in (0, 1):
                for _ in range(max(score[team] - self.score[team], 0)):
                    self.new_goals.append(GoalInfo(time=time, team=team))
        self.score = score

    def _touched(self, players: list[LivePlayer]) -> list[int]:
        """Columns whose touch counter went up since the player's previous frame."""
        touched = []
        for column, player in enumerate(players):
            before = self.touch_counts.get(player.id)
            if before is not None and player.touches > before:
                touched.append(column)
            self.touch_counts[player.id] = player.touches
        return touched

    def _time(self, frame: LiveFrame) -> float:
        if frame.game_time is not None:
            return frame.game_time
        received = frame.received_at.timestamp()
        if self.started_at is None:
            self.started_at = received
        return received - self.started_at

    def _row(self, frame: LiveFrame, players: list[LivePlayer]) -> Row:
        assert frame.ball is not None
        previous = self.last_row
        time = self._time(frame)
        dt = time - previous.time if previous is not None else 0.0
        b = frame.ball
        position = (b.x, b.y, b.z)
        before = previous.ball.tolist() if previous is not None else None
        velocity = _velocity((b.vx, b.vy, b.vz), position, before, dt, b.speed, MAX_BALL_SPEED)
        ball = np.array(position + velocity, dtype=np.float32)
        cars_before = previous.cars.tolist() if previous is not None else None
        cars = np.array(
            [
                _car(player, cars_before[p] if cars_before is not None else None, dt)
                for p, player in enumerate(players)
            ],
            dtype=np.float32,
        ).reshape(len(players), len(PLAYER_FIELDS))
        remaining = frame.seconds_remaining
        if remaining is None:
            remaining = previous.seconds_remaining if previous else DEFAULT_SECONDS_REMAINING
        return Row(time, remaining, ball, cars, self._touched(players))

    def push(self) -> StreamFeaturizer:
        """Hand the pending rows to the match's stream featurizer."""
        if self.stream is None:
            infos = [
                PlayerInfo(index=i, name=p.name, team=p.team) for i, p in enumerate(self.players)
            ]
            team_size = int(np.bincount(self.layout, minlength=2).max())
            self.stream = StreamFeaturizer(self.match_id, infos, team_size)
            self.p_score = np.zeros((0, 2))
        rows = self.rows
        self.stream.push(
            np.array([r.time for r in rows]),
            np.array([r.seconds_remaining for r in rows]),
            np.stack([r.ball for r in rows]),
            np.stack([r.cars for r in rows]),
            np.array([(i, c) for i, r in enumerate(rows) for c in r.touched]),
            self.new_goals,
        )
        self.rows, self.new_goals = [], []
        return self.stream

    def scored(self, features: np.ndarray, probabilities: np.ndarray) -> list[TouchCredit]:
        """The rows of the stream from its first out-of-date frame are known: credit the
        touches whose outcome is settled, add them to the totals, and drop old frames."""
        stream = self.stream
        assert stream is not None
        start = stream.n_frames - features.shape[0]
        on_pitch = features[:, :, DEMOLISHED] < 0.5
        self.p_score = np.concatenate(
            (self.p_score[:start], team_probability(stream.teams, on_pitch, probabilities))
        )
        self.latest_probabilities = probabilities[-1]
        new = len(self.pending)
        for player in self.players:
            self.totals.setdefault(player.id, Totals()).n += new
        self.pending = []
        credits = self._credit(stream)
        self._count_pace(stream, stream.settled())
        keep_from = max(self.credit_from - stream.first - 1, 0)
        first = stream.first
        stream.drop(keep_from)
        self.p_score = self.p_score[stream.first - first :]
        return credits

    def finish(self) -> list[TouchCredit]:
        """The match ended: credit the touches left, as the replay scorer does at its end."""
        if self.stream is None or self.stream.n_frames == 0 or self.pending:
            return []
        self._count_pace(self.stream, self.stream.n_frames)
        return self._credit(self.stream, ended=True)

    def _count_pace(self, stream: StreamFeaturizer, settled: int) -> None:
        """Add the pace of the buffer's frames from ``pace_from`` to ``settled`` (whose live
        flags are known) to the totals: the replay scorer's :func:`table_pace` of them."""
        begin = self.pace_from - stream.first
        if settled <= begin:
            return
        assert stream.context is not None
        cars = stream.cars[begin:settled]
        speed = car_speed(cars[:, :, CAR_VEL])
        on_pitch = cars[:, :, PLAYER_FIELD["demolished"]] < 0.5
        live = stream.context.live[begin:settled]
        step = 1.0 / stream.frames_per_second  # the median step, as frame_step's
        points = pace_credit(pace_per_frame(speed, on_pitch, live, step))  # [k, P]
        units = np.rint(points / PACE_UNIT).astype(np.int64).sum(axis=0)
        for player, added in zip(self.players, units.tolist(), strict=True):
            self.totals.setdefault(player.id, Totals()).pace_units += added
        self.pace_from = stream.first + settled

    def _credit(self, stream: StreamFeaturizer, ended: bool = False) -> list[TouchCredit]:
        """Credit each touch from ``credit_from`` whose next touch or end of play is settled
        (at the end of the match: every touch left)."""
        settled = stream.n_frames if ended else stream.settled()
        begin = self.credit_from - stream.first
        if settled <= begin:
            return []
        assert stream.context is not None
        touched = np.asarray(stream.context.touched[begin:settled].any(axis=1))
        waiting = not ended and touched[0] and stream.context.live[begin:settled].all()
        if not touched[1:].any() and (waiting or not touched[0]):  # most polls
            if not waiting:  # no touch at all
                self.credit_from = stream.first + settled
            return []
        a = max(begin - 1, 0)
        table = self.table(a, settled)
        credits = [
            c for c in credit_touches(table, self.p_score[a:settled]) if c.frame >= begin - a
        ]
        self.credit_from = stream.first + settled
        if credits and not ended and table.live[credits[-1].frame :].all():
            # play goes on after the latest touch: its outcome is not known yet (nor that of
            # another car touching the ball in the same frame)
            last = credits[-1].frame
            self.credit_from = stream.first + a + last
            credits = [c for c in credits if c.frame != last]
        for credit in credits:
            totals = self.totals.setdefault(self.players[credit.player_index].id, Totals())
            totals.offence += IMPACT_SCALE * credit.offence
            totals.defence += IMPACT_SCALE * credit.defence
            totals.touches += 1
        return credits

    def table(self, start: int, stop: int, features: np.ndarray | None = None) -> FeatureTable:
        """The stream's frames [start, stop) as a feature table (no labels: not known live);
        without ``features`` (crediting touches reads none), one of no columns."""
        stream = self.stream
        assert stream is not None and stream.context is not None
        window = slice(start, stop)
        labels = np.zeros((stop - start, len(self.players)), dtype=bool)
        return FeatureTable(
            replay_id=self.match_id,
            time=stream.time[window],
            segment=stream.context.goals_for[window].sum(axis=1),
            live=stream.context.live[window],
            features=features
            if features is not None
            else np.zeros((stop - start, len(self.players), 0), dtype=np.float32),
            label_score=labels,
            label_concede=labels,
            touched=stream.context.touched[window],
            players=stream.players,
            goals=stream.goals,
        )


Vector = tuple[float, float, float]


def _velocity(
    given: tuple[float | None, float | None, float | None],
    position: Vector,
    previous: list[float] | None,
    dt: float,
    speed: float | None,
    max_speed: float,
) -> Vector:
    """The feed's velocity when it sent one; else the finite difference of positions, scaled
    to the reported speed when there is one, capped at what the game allows. ``previous``:
    the previous frame's position and velocity.

    A feed may repeat a position for a frame or two while the object moves (SOS sends what the
    game last replicated): when it reports a speed, the previous direction is kept then, so a
    rolling ball does not read as still (which would hide a kickoff).

    Plain floats, not numpy: for three numbers the call overhead would be most of the cost."""
    if None not in given:
        return given  # type: ignore[return-value]
    if previous is None or dt < MIN_DT:
        return (0.0, 0.0, 0.0)
    velocity = [(position[k] - previous[k]) / dt for k in range(3)]
    norm = math.hypot(*velocity)
    if norm <= 1e-6 and speed:
        velocity = previous[3:6]
        norm = math.hypot(*velocity)
    scale = 1.0
    if speed is not None and norm > 1e-6:
        scale, norm = speed / norm, speed
    if norm > max_speed:  # a respawn or a kickoff reset teleports the object
        scale *= max_speed / norm
    return (velocity[0] * scale, velocity[1] * scale, velocity[2] * scale)


def _car(player: LivePlayer, previous: list[float] | None, dt: float) -> list[float]:
    """One row of ``cars``: a car with no location keeps its last place and rotation and
    reads as demolished (no velocity)."""
    if player.has_location:
        position: Vector = (player.x, player.y, player.z)  # type: ignore[assignment]
        rotation = [v if v is not None else 0.0 for v in (player.roll, player.pitch, player.yaw)]
    elif previous is not None:
        position, rotation = (previous[0], previous[1], previous[2]), previous[3:6]
    else:
        position, rotation = (0.0, 0.0, 0.0), [0.0, 0.0, 0.0]
    demolished = player.demolished or not player.has_location
    velocity: Vector = (0.0, 0.0, 0.0)
    if not demolished:
        before = [*previous[0:3], *previous[6:9]] if previous is not None else None
        given = (player.vx, player.vy, player.vz)
        velocity = _velocity(given, position, before, dt, player.speed, MAX_CAR_SPEED)
    return [
        *position,
        *rotation,
        *velocity,
        player.boost,
        float(player.jumping),
        float(demolished),
    ]
