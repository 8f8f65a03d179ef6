"""Per-frame, player-centric features, game segments and replay-borne labels. Pure numpy, no I/O.

Every player sees the pitch from its own side: team 1's frames are rotated 180 degrees about
the vertical axis, so every player defends the goal at -y and attacks +y.

A replay is cut into kickoff-to-goal segments. Frames between a goal and the next kickoff (goal
replay, countdown) are not *live*: the model is neither trained nor evaluated on them, and no
impact is credited there.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np

from shared.events import GoalInfo, PlayerInfo
from shared.frames import BALL_FIELD, PLAYER_FIELD, ParsedReplay

FEATURE_SCHEMA_VERSION = 2

GOAL_Y = 5120.0
SIDE_WALL_X = 4096.0
POS_SCALE = 5120.0
CAR_SPEED_SCALE = 2300.0
BALL_SPEED_SCALE = 6000.0
ON_GROUND_MAX_Z = 25.0
WALL_MARGIN = 200.0  # a car off the ground this close to a wall is on the wall
TEAMMATE_SLOTS = 2
OPPONENT_SLOTS = 3
MATCH_SECONDS = 300.0
TOUCH_MEMORY_SECONDS = 10.0  # time-since-touch features saturate here
SCORE_DIFF_CAP = 3.0
GOALS_CAP = 5.0
THIRD_Y = GOAL_Y / 3.0
TOUCH_COUNT_SCALE = 5.0
STILL_SPEED = 1.0  # uu/s: the ball waiting for a kickoff
RESUME_SECONDS = 1.0

_OTHER_FIELDS = (
    "present", "rel_x", "rel_y", "rel_z", "vx", "vy", "boost", "dist_ball", "goal_side",
)  # fmt: skip


def _slot_names(prefix: str, slots: int) -> list[str]:
    return [f"{prefix}{slot}_{field}" for slot in range(slots) for field in _OTHER_FIELDS]


FEATURE_NAMES: tuple[str, ...] = (
    *("ball_x", "ball_y", "ball_z", "ball_vx", "ball_vy", "ball_vz", "ball_speed"),
    *("x", "y", "z", "vx", "vy", "vz", "speed", "boost", "jumping", "demolished"),
    *("on_ground", "on_wall", "forward_x", "forward_y", "pitch"),
    *("ball_rel_x", "ball_rel_y", "ball_rel_z", "ball_dist"),
    *("ball_rel_vx", "ball_rel_vy", "ball_rel_vz", "closing_speed"),
    *("own_goal_dx", "own_goal_dy", "own_goal_dist", "opp_goal_dist"),
    *_slot_names("mate", TEAMMATE_SLOTS),
    *_slot_names("opp", OPPONENT_SLOTS),
    # team level: the same for every player of a team
    *("ball_own_goal_dist", "ball_opp_goal_dist", "ball_v_to_opp_goal", "ball_v_to_own_goal"),
    *("mates_goal_side", "opps_goal_side", "team_min_goal_dist", "opp_min_goal_dist"),
    *("team_ball_dist", "opp_ball_dist", "closest_in_team", "team_closest_to_ball"),
    *("possession", "touched_last", "since_touch", "since_kickoff", "score_diff"),
    *("goals_for", "goals_against", "seconds_remaining", "team_size"),
    # the recent past of the segment (windows stop at its kickoff)
    *("ball_x_1s", "ball_y_1s", "ball_z_1s", "ball_x_2s", "ball_y_2s", "ball_z_2s"),
    *("ball_y_mean_5s", "ball_y_mean_10s", "attacking_third_10s", "defending_third_10s"),
    *("team_touches_5s", "opp_touches_5s"),
)
N_FEATURES = len(FEATURE_NAMES)

# The pitch mirrored left-right (x -> -x) is the same game: these features change sign under it
# and every other one stays (slots are ranked by distance, the thirds and goals lie on y).
MIRROR_ODD_FEATURES = frozenset(
    name
    for name in FEATURE_NAMES
    if name in ("ball_x", "ball_vx", "x", "vx", "forward_x", "ball_rel_x", "ball_rel_vx")
    or name in ("own_goal_dx", "ball_x_1s", "ball_x_2s")
    or (name.endswith(("_rel_x", "_vx")) and name.startswith(("mate", "opp")))
)
MIRROR_SIGNS = np.array([-1.0 if n in MIRROR_ODD_FEATURES else 1.0 for n in FEATURE_NAMES], "f4")


@dataclass(frozen=True)
class FeatureTable:
    replay_id: str
    time: np.ndarray  # [T]
    segment: np.ndarray  # [T] kickoff-to-goal segment index (goals scored before this frame)
    live: np.ndarray  # [T] bool: between a kickoff and the next goal
    features: np.ndarray  # [T, P, N_FEATURES] float32
    label_score: np.ndarray  # [T, P] bool: the player's team scores within the horizon
    label_concede: np.ndarray  # [T, P] bool: the player's team concedes within the horizon
    touched: np.ndarray  # [T, P] bool: the player touched the ball in this frame
    players: list[PlayerInfo]
    goals: list[GoalInfo]
    map_name: str | None = None  # the arena and the game mode: see shared/scope.py
    game_mode: str | None = None

    @property
    def touch_events(self) -> np.ndarray:
        """[K, 2] int (frame, player index), sorted by frame."""
        return np.argwhere(self.touched)

    def frames(self, start: int, stop: int) -> FeatureTable:
        """The table of frames [start, stop): every per-frame field sliced alike."""
        window = slice(start, stop)
        return replace(
            self,
            time=self.time[window],
            segment=self.segment[window],
            live=self.live[window],
            features=self.features[window],
            label_score=self.label_score[window],
            label_concede=self.label_concede[window],
            touched=self.touched[window],
        )


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


def featurize(parsed: ParsedReplay, horizon_seconds: float = 10.0) -> FeatureTable:
    teams = np.array([player.team for player in parsed.players])
    context = game_context(parsed)
    features = feature_rows(parsed, context, np.arange(parsed.n_frames))
    scored = goal_within(parsed.time, parsed.goals, horizon_seconds)  # [T, 2] by team
    return FeatureTable(
        replay_id=parsed.replay_id,
        time=parsed.time,
        segment=context.goals_for.sum(axis=1),
        live=context.live,
        features=features,
        label_score=scored[:, teams],
        label_concede=scored[:, 1 - teams],
        touched=context.touched,
        players=parsed.players,
        goals=parsed.goals,
        map_name=parsed.map_name,
        game_mode=parsed.game_mode,
    )


def goal_within(time: np.ndarray, goals: list[GoalInfo], horizon: float) -> np.ndarray:
    """[T, 2] bool: team k scores in (t, t + horizon]."""
    result = np.zeros((time.shape[0], 2), dtype=bool)
    for team in (0, 1):
        goal_times = np.sort([g.time for g in goals if g.team == team])
        if goal_times.size == 0:
            continue
        next_index = np.searchsorted(goal_times, time, side="right")
        has_next = next_index < goal_times.size
        next_time = goal_times[np.minimum(next_index, goal_times.size - 1)]
        result[:, team] = has_next & (next_time - time <= horizon)
    return result


def feature_rows(parsed: ParsedReplay, context: GameContext, rows: np.ndarray) -> np.ndarray:
    """[len(rows), P, N_FEATURES] float32: the features of the frames ``rows``; the features
    of the recent past read the frames before them. Costs in proportion to ``len(rows)``."""
    teams = np.array([player.team for player in parsed.players])
    ball, cars = _oriented(parsed.ball[rows], parsed.cars[rows], teams)
    result = np.zeros((rows.shape[0], teams.shape[0], N_FEATURES), dtype=np.float32)
    # players with as many teammates (all of them when the teams are even) go in one pass
    sizes = np.bincount(teams, minlength=2)[teams]
    for size in np.unique(sizes):
        group = np.flatnonzero(sizes == size)
        result[:, group] = _players_block(ball, cars, parsed, teams, group, context, rows)
    return result


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
    still = _length(ball[:, 3:6], axis=1) < STILL_SPEED
    if dt is None:
        dt = _frame_step(time)
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
        index = int(np.searchsorted(time, moment, side="left"))
        live[start:index] = state
        state, start = resumes, index
    live[start:] = state
    return live


def game_context(parsed: ParsedReplay, carry: StreamCarry | None = None) -> GameContext:
    n_frames, n_players = parsed.n_frames, len(parsed.players)
    dt = _frame_step(parsed.time)
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
        frames_per_second=_frames_per_second(dt, n_frames),
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


def _frames_per_second(step: float, n_frames: int) -> float:
    """From the median frame step (10 fps when there are fewer than two frames)."""
    return 1.0 / max(step, 1e-3) if n_frames > 1 else 10.0


def _frame_step(time: np.ndarray) -> float:
    """The median interval between frames (1 s for fewer than two): ``np.median``'s value,
    without its overhead, which was a fifth of a live stream's context refresh."""
    if time.shape[0] < 2:
        return 1.0
    steps = np.sort(np.diff(time))
    middle = steps.shape[0] // 2
    if steps.shape[0] % 2:
        return float(steps[middle])
    return float((steps[middle - 1] + steps[middle]) / 2)


def _oriented(
    ball: np.ndarray, cars: np.ndarray, teams: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Ball [T, P, 6] and cars [T, P(viewer), P, F] as seen by each viewer's team."""
    sign = np.where(teams == 0, 1.0, -1.0).astype(np.float32)  # [P]
    ball_view = np.repeat(ball[:, None, :], len(teams), axis=1).copy()
    for axis in ("x", "y", "vx", "vy"):
        ball_view[:, :, BALL_FIELD[axis]] *= sign
    cars_view = np.repeat(cars[:, None, :, :], len(teams), axis=1).copy()
    for axis in ("x", "y", "vx", "vy"):
        cars_view[:, :, :, PLAYER_FIELD[axis]] *= sign[None, :, None]
    cars_view[:, :, :, PLAYER_FIELD["yaw"]] += np.where(teams == 0, 0.0, np.pi)[None, :, None]
    return ball_view, cars_view


def _norm(vectors: np.ndarray) -> np.ndarray:
    return _length(vectors, keepdims=True)


def _length(vectors: np.ndarray, axis: int = -1, keepdims: bool = False) -> np.ndarray:
    """Euclidean length along ``axis``: ``np.linalg.norm``'s exact value (it computes the
    same), without its overhead, which counts on the live path's few rows per call."""
    return np.sqrt(np.add.reduce(vectors * vectors, axis=axis, keepdims=keepdims))


def _players_block(
    ball: np.ndarray,
    view: np.ndarray,
    parsed: ParsedReplay,
    teams: np.ndarray,
    group: np.ndarray,
    context: GameContext,
    rows: np.ndarray,
) -> np.ndarray:
    """[R, G, N_FEATURES] for the players ``group`` at frames ``rows``, in one pass; ``ball``
    [R, P, 6] and ``view`` [R, P, P, F] of those frames in each viewer's frame. The players of
    a group have as many teammates (and opponents) as each other: every (frame, player) pair
    is one row of the same per-player computation."""
    n_rows, size, n_players = rows.shape[0], group.shape[0], teams.shape[0]
    viewer = np.tile(group, n_rows)  # [R'] the player each row is about, R' = R * G
    frame = np.repeat(np.arange(n_rows), size)  # [R'] its position in ``rows``
    row_team = teams[viewer]
    by_viewer = view[:, group]  # [R, G, P, F]
    seen = by_viewer.reshape(n_rows * size, n_players, -1)  # [R', P, F] in viewer's frame
    member = np.arange(size)[:, None]  # [G, 1]: with [G, k] columns, picks k cars per viewer

    def cars_of(columns: np.ndarray) -> np.ndarray:  # [R', k, F]
        shape = (n_rows * size, columns.shape[1], by_viewer.shape[-1])
        return by_viewer[:, member, columns].reshape(shape)

    def dist_of(dist: np.ndarray, columns: np.ndarray) -> np.ndarray:  # [R', k]
        return dist.reshape(n_rows, size, n_players)[:, member, columns].reshape(
            n_rows * size, columns.shape[1]
        )

    every = np.arange(n_rows * size)
    me = seen[every, viewer]
    b = ball[:, group].reshape(n_rows * size, -1)
    b_pos, b_vel = b[:, 0:3], b[:, 3:6]
    pos, vel = me[:, 0:3], me[:, 6:9]
    to_ball = b_pos - pos
    ball_dist = _length(to_ball, axis=1)
    rel_vel = b_vel - vel
    closing = -np.sum(rel_vel * to_ball, axis=1) / np.maximum(ball_dist, 1.0)
    own_goal = np.array([0.0, -GOAL_Y, 0.0], dtype=np.float32)
    opp_goal = -own_goal
    yaw, pitch = me[:, PLAYER_FIELD["yaw"]], me[:, PLAYER_FIELD["pitch"]]
    same, mates_of, opps_of, team_of = _layout(tuple(teams.tolist()), tuple(group.tolist()))
    team, opponents = same[viewer], ~same[viewer]  # [R', P]
    mates_cars, opps_cars, team_cars = cars_of(mates_of), cars_of(opps_of), cars_of(team_of)
    all_dist = _length(seen[:, :, 0:3] - b_pos[:, None, :], axis=2)  # [R', P]
    absent = seen[:, :, PLAYER_FIELD["demolished"]] > 0.5
    live_dist = np.where(absent, np.inf, all_dist)
    team_dist = np.where(team, live_dist, np.inf)
    opp_dist = np.where(opponents, live_dist, np.inf)
    mates_dist, opps_dist = dist_of(live_dist, mates_of), dist_of(live_dist, opps_of)
    on_ground = pos[:, 2:3] < ON_GROUND_MAX_Z
    near_wall = (np.abs(pos[:, 0:1]) > SIDE_WALL_X - WALL_MARGIN) | (
        np.abs(pos[:, 1:2]) > GOAL_Y - WALL_MARGIN
    )
    frame_rows = rows[frame]
    toucher = context.last_toucher[frame_rows]
    possession = np.where(toucher < 0, 0.0, np.where(teams[toucher] == row_team, 1.0, -1.0))
    goals_for = context.goals_for[frame_rows]
    scored, conceded = goals_for[every, row_team], goals_for[every, 1 - row_team]
    columns = [
        b_pos / POS_SCALE,
        b_vel / BALL_SPEED_SCALE,
        _norm(b_vel) / BALL_SPEED_SCALE,
        pos / POS_SCALE,
        vel / CAR_SPEED_SCALE,
        _norm(vel) / CAR_SPEED_SCALE,
        me[:, [PLAYER_FIELD["boost"], PLAYER_FIELD["jumping"], PLAYER_FIELD["demolished"]]],
        on_ground,
        ~on_ground & near_wall,
        np.stack([np.cos(yaw), np.sin(yaw), pitch], axis=1),
        to_ball / POS_SCALE,
        ball_dist[:, None] / POS_SCALE,
        rel_vel / BALL_SPEED_SCALE,
        closing[:, None] / CAR_SPEED_SCALE,
        (pos[:, 0:2] - own_goal[None, 0:2]) / POS_SCALE,
        _norm(pos - own_goal) / POS_SCALE,
        _norm(pos - opp_goal) / POS_SCALE,
        _slots(mates_cars, pos, b_pos, mates_dist, TEAMMATE_SLOTS, defends=-1.0),
        _slots(opps_cars, pos, b_pos, opps_dist, OPPONENT_SLOTS, 1.0),
        _norm(b_pos - own_goal) / POS_SCALE,
        _norm(b_pos - opp_goal) / POS_SCALE,
        _speed_towards(b_pos, b_vel, opp_goal),
        _speed_towards(b_pos, b_vel, own_goal),
        np.mean(team_cars[:, :, 1] < b_pos[:, 1:2], axis=1, keepdims=True),
        np.mean(opps_cars[:, :, 1] > b_pos[:, 1:2], axis=1, keepdims=True)
        if opps_of.shape[1]
        else np.zeros((len(pos), 1)),
        _min_goal_dist(team_cars, own_goal),
        _min_goal_dist(opps_cars, opp_goal),
        _capped_dist(team_dist.min(axis=1)),
        _capped_dist(opp_dist.min(axis=1)),
        (np.argmin(team_dist, axis=1) == viewer)[:, None],
        (team_dist.min(axis=1) <= opp_dist.min(axis=1))[:, None],
        possession[:, None],
        (toucher == viewer)[:, None],
        context.since_touch[frame_rows, None] / TOUCH_MEMORY_SECONDS,
        np.minimum(context.since_kickoff[frame_rows], MATCH_SECONDS)[:, None] / MATCH_SECONDS,
        np.clip(scored - conceded, -SCORE_DIFF_CAP, SCORE_DIFF_CAP)[:, None] / SCORE_DIFF_CAP,
        np.minimum(np.stack([scored, conceded], axis=1), GOALS_CAP) / GOALS_CAP,
        parsed.seconds_remaining[frame_rows, None] / MATCH_SECONDS,
        np.full((len(pos), 1), parsed.team_size / 4.0),
        _team_past(parsed, teams, context, rows)[row_team, frame],
    ]
    out = np.concatenate([np.asarray(c, dtype=np.float32) for c in columns], axis=1)
    return out.reshape(n_rows, size, N_FEATURES)


@functools.cache
def _layout(
    teams: tuple[int, ...], group: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For a team layout: [P, P] same team; and for each player of ``group`` its teammates
    [G, m], opponents and team (itself included) by column. Few layouts ever occur."""
    team = np.array(teams)
    index = np.arange(team.shape[0])
    same = team[:, None] == team[None, :]
    mates_of = np.stack([np.flatnonzero(same[p] & (index != p)) for p in group])
    opps_of = np.stack([np.flatnonzero(~same[p]) for p in group])
    team_of = np.stack([np.flatnonzero(same[p]) for p in group])
    for array in (same, mates_of, opps_of, team_of):
        array.flags.writeable = False  # shared by every call with this layout
    return same, mates_of, opps_of, team_of


def _team_past(
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


def _speed_towards(pos: np.ndarray, vel: np.ndarray, target: np.ndarray) -> np.ndarray:
    direction = target[None, :] - pos
    unit = direction / np.maximum(_norm(direction), 1.0)
    return np.sum(vel * unit, axis=1, keepdims=True) / BALL_SPEED_SCALE


def _min_goal_dist(cars: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Distance of the car nearest to ``goal`` (a demolished car does not count)."""
    if cars.shape[1] == 0:
        return np.full((cars.shape[0], 1), 2.0)
    dist = _length(cars[:, :, 0:3] - goal[None, None, :], axis=2)
    dist = np.where(cars[:, :, PLAYER_FIELD["demolished"]] > 0.5, np.inf, dist)
    return _capped_dist(dist.min(axis=1))


def _capped_dist(dist: np.ndarray) -> np.ndarray:
    """[T] -> [T, 1] scaled; 'nobody' (inf: everyone demolished or absent) reads as far away."""
    return np.where(np.isfinite(dist), dist / POS_SCALE, 2.0)[:, None]


def _slots(
    others: np.ndarray,
    pos: np.ndarray,
    b_pos: np.ndarray,
    dist: np.ndarray,
    slots: int,
    defends: float,
) -> np.ndarray:
    """Other cars nearest the ball first, padded with zeros (present=0) to ``slots``.

    ``dist`` is inf for a demolished or absent car: it sorts last and reads as not present.
    ``defends`` is the sign of the goal those cars defend (-1 own team, +1 opponents):
    goal_side says whether the car is between the ball and that goal.
    """
    n_frames = pos.shape[0]
    out = np.zeros((n_frames, slots, len(_OTHER_FIELDS)), dtype=np.float32)
    if others.shape[1] == 0:
        return out.reshape(n_frames, -1)
    order = np.argsort(dist, axis=1)[:, :slots]
    row = np.arange(n_frames)[:, None]
    chosen, chosen_dist = others[row, order], dist[row, order]
    taken = chosen.shape[1]
    present = np.isfinite(chosen_dist)[:, :, None]
    out[:, :taken, 0] = 1.0
    out[:, :taken, 1:4] = (chosen[:, :, 0:3] - pos[:, None, :]) / POS_SCALE
    out[:, :taken, 4:6] = chosen[:, :, 6:8] / CAR_SPEED_SCALE
    out[:, :taken, 6] = chosen[:, :, PLAYER_FIELD["boost"]]
    out[:, :taken, 7] = np.where(present[:, :, 0], chosen_dist, 0.0) / POS_SCALE
    out[:, :taken, 8] = defends * (chosen[:, :, 1] - b_pos[:, None, 1]) > 0
    out[:, :taken] *= present
    return out.reshape(n_frames, -1)


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
        self.frames_per_second = _frames_per_second(_frame_step(self.time), self.n_frames)

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
