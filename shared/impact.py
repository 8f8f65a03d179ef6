"""Impact scores from a feature table with an ONNX model. Pure: no Kafka, no database.

The model gives, for each live frame, P(team k scores within the horizon) for both teams (the
mean over the rows of both teams' players: a blue row's P(concede) is a forecast of orange
scoring).

Impact is credited per ball touch, from the frames between the touch and the next touch by
anyone (or the end of play), in the parts of :class:`shared.rating.TouchParts`:

- the *change*: the change in its team's P(score) and the fall in its P(concede) by the next
  touch: a goal sets P(score) to 1 for the scoring team and to 0 for the other, so the touch
  before a goal takes the goal's credit;
- the *threat*: how many times more likely its team was to score than to concede while the
  possession it started lasted, log(P(score) / P(concede)) summed over those frames x the frame
  step / horizon;
- the *held* value: the expected goals for meanwhile (P(score within the horizon) / horizon is
  a goal rate, so its sum over the frames x the frame step is the expected number of goals of
  that time);
- the touch itself.

:mod:`shared.rating` weighs them into the touch's credit in goals, split into offence (its
team's own scoring) and defence (the other team's), with weights fitted to what a team's edge
in them forecasts: its later goal difference (``rlimpact fit-rating``). A player's impact is
the sum over the player's touches, x100 (100 points = one goal of forecast goal difference);
``impact_per_minute`` divides it by the live minutes of the replay (``rlimpact validate``
measures how far it can be trusted: README, *How far impact can be trusted*).

Off-ball play is credited through the threat and held value, and through *pace*: what the
team holds between a touch and the next one goes to the player who made the first touch, so
positioning (a teammate's run, a defender's shadowing) counts through the touches it leads to
or prevents and the threat the team keeps meanwhile; and every player, frame by frame, is
credited for its speed above the mean of the cars on the pitch (:func:`pace_per_frame`,
weighed by :mod:`shared.rating`). A player's impact is offence + defence + pace.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.features.context import median_step
from shared.features.table import FEATURE_NAMES, FeatureTable
from shared.model import ImpactModel, Predictor, predict_table
from shared.rating import SHIPPED_WEIGHTS, RatingWeights, TouchParts, offence_defence, threat

IMPACT_SCALE = 100.0
SECONDS_PER_MINUTE = 60.0
DEMOLISHED = FEATURE_NAMES.index("demolished")
SPEED = FEATURE_NAMES.index("speed")  # the car's speed / its top speed
# The forecast's horizon (the shipped model's P(score within 10 s)): P / horizon is a goal rate
FORECAST_HORIZON_SECONDS = 10.0


@dataclass(frozen=True)
class PlayerScore:
    player_index: int
    name: str
    team: int
    impact: float  # offence + defence + pace, summed over the replay (100 = one goal)
    offence: float  # the part from raising the team's P(score)
    defence: float  # the part from lowering its P(concede) (positive = good defending)
    n_frames: int
    impact_per_minute: float = 0.0  # impact / live minutes of the replay
    touches: int = 0
    pace: float = 0.0  # the part from outpacing the cars on the pitch


@dataclass(frozen=True)
class TouchCredit:
    frame: int
    player_index: int
    team: int
    offence: float  # the rating's credit for its team's own scoring, in goals (not x100)
    defence: float  # for the other team's (positive = good defending)
    held_for: float = 0.0  # expected goals for until the next touch or the end of play
    held_against: float = 0.0  # expected goals against meanwhile
    parts: TouchParts | None = None  # what the credit is weighed from (shared.rating)

    @property
    def value(self) -> float:
        return self.offence + self.defence


def team_score_probability(table: FeatureTable, probabilities: np.ndarray) -> np.ndarray:
    """[T, 2]: P(team k scores within the horizon), from the rows of both teams' players."""
    teams = np.array([p.team for p in table.players])
    return team_probability(teams, table.features[:, :, DEMOLISHED] < 0.5, probabilities)


def team_probability(
    teams: np.ndarray, on_pitch: np.ndarray, probabilities: np.ndarray
) -> np.ndarray:
    """[T, 2] from each player's row [T, P, 2] (P(own team scores), P(it concedes)): team k's
    P(score) is the mean of its players' P(score) and the other team's P(concede).

    Rows of cars on the pitch (``on_pitch`` [T, P]) count; a demolished or absent car's row
    counts only when no car is on the pitch.
    """
    result = np.zeros((probabilities.shape[0], 2))
    if not teams.shape[0]:
        return result
    weights = np.where(on_pitch.any(axis=1, keepdims=True), on_pitch, True).astype(np.float64)
    total = weights.sum(axis=1)
    for team in (0, 1):
        forecasts = np.where(teams == team, probabilities[:, :, 0], probabilities[:, :, 1])
        result[:, team] = (forecasts * weights).sum(axis=1) / total
    return result


def credit_touches(
    table: FeatureTable,
    p_score: np.ndarray,
    horizon: float = FORECAST_HORIZON_SECONDS,
    weights: RatingWeights = SHIPPED_WEIGHTS,
) -> list[TouchCredit]:
    """One credit per live touch; ``p_score`` [T, 2] from :func:`team_score_probability`."""
    teams = np.array([p.team for p in table.players])
    stretches = _live_stretches(table.live)
    outcome = _stretch_outcomes(table, stretches)
    held = _sum_so_far(table, p_score, horizon)
    threats = _sum_so_far(table, threat(p_score, weights.reference), horizon)
    credits: list[TouchCredit] = []
    for (start, stop), final in zip(stretches, outcome, strict=True):
        frames, players = np.nonzero(table.touched[start:stop])
        frames = frames + start
        for i, (frame, player) in enumerate(zip(frames, players, strict=True)):
            before = p_score[max(int(frame) - 1, start)]
            if i + 1 < len(frames):
                until = int(frames[i + 1])
                after = p_score[max(until - 1, start)]
            else:
                until = int(stop)
                after = final if final is not None else p_score[stop - 1]
            team = int(teams[player])
            expected = held[until] - held[frame]
            threatened = threats[until] - threats[frame]
            parts = TouchParts(
                change_for=float(after[team] - before[team]),
                change_against=float(before[1 - team] - after[1 - team]),
                threat_for=float(threatened[team]),
                threat_against=float(-threatened[1 - team]),
                held_for=float(expected[team]),
                held_against=float(expected[1 - team]),
            )
            offence, defence = offence_defence(parts, weights)
            credits.append(
                TouchCredit(
                    frame=int(frame),
                    player_index=int(player),
                    team=team,
                    offence=offence,
                    defence=defence,
                    held_for=parts.held_for,
                    held_against=parts.held_against,
                    parts=parts,
                )
            )
    return credits


def _sum_so_far(table: FeatureTable, per_frame: np.ndarray, horizon: float) -> np.ndarray:
    """[T + 1, 2]: row i holds each team's sum of ``per_frame`` [T, 2] over the live frames
    before frame i, x the frame step / horizon (for P(score within the horizon): the expected
    goals of that time, P / horizon being a goal rate)."""
    step = frame_step(table)
    rate = np.where(table.live[:, None], per_frame, 0.0) * (step / horizon)
    return np.concatenate([np.zeros((1, 2)), np.cumsum(rate, axis=0)])


def _live_stretches(live: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of live frames."""
    edges = np.diff(np.r_[0, live.astype(np.int8), 0])
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def _stretch_outcomes(
    table: FeatureTable, stretches: list[tuple[int, int]]
) -> list[np.ndarray | None]:
    """Per stretch, the P(score) pair its end fixes: a goal right at its end decides it.

    A goal after the table's last frame (a table cut from a longer one, a live match) decides
    nothing in it: play may go on in the frames the table does not have.
    """
    outcomes: list[np.ndarray | None] = []
    n_frames = table.time.shape[0]
    goal_frames = {
        frame: g.team
        for g in table.goals
        if (frame := int(np.searchsorted(table.time, g.time, side="left"))) < n_frames
    }
    for _, stop in stretches:
        team = goal_frames.get(int(stop))
        outcomes.append(None if team is None else np.eye(2)[team])
    return outcomes


def frame_step(table: FeatureTable) -> float:
    """Seconds between frames (the median step; 0 for fewer than two frames)."""
    return median_step(table.time) if table.time.shape[0] > 1 else 0.0


def live_minutes(table: FeatureTable) -> float:
    return float(table.live.sum()) * frame_step(table) / SECONDS_PER_MINUTE


def pace_per_frame(
    speed: np.ndarray,
    on_pitch: np.ndarray,
    live: np.ndarray,
    step: float,
    horizon: float = FORECAST_HORIZON_SECONDS,
) -> np.ndarray:
    """[T, P] each player's pace in each frame (:mod:`shared.rating`): ``speed`` [T, P] (the
    car's speed / its top speed) above the mean of the cars on the pitch (``on_pitch`` [T,
    P]), x ``step`` / ``horizon``; 0 in frames not ``live`` [T] and for a car off the pitch."""
    speed = speed.astype(np.float64)
    cars = np.maximum(on_pitch.sum(axis=1, keepdims=True), 1)
    mean = np.where(on_pitch, speed, 0.0).sum(axis=1, keepdims=True) / cars
    counted = on_pitch & live[:, None]
    return np.where(counted, speed - mean, 0.0) * (step / horizon)


def table_pace(table: FeatureTable) -> np.ndarray:
    """[T, P] :func:`pace_per_frame` of a feature table's frames."""
    on_pitch = table.features[:, :, DEMOLISHED] < 0.5
    return pace_per_frame(table.features[:, :, SPEED], on_pitch, table.live, frame_step(table))


def pace_credit(pace: np.ndarray | float, weights: RatingWeights = SHIPPED_WEIGHTS) -> np.ndarray:
    """Pace (summed over frames) as impact points."""
    return IMPACT_SCALE * weights.scale * weights.pace * np.asarray(pace, dtype=np.float64)


def score_credits(
    table: FeatureTable, credits: list[TouchCredit], weights: RatingWeights = SHIPPED_WEIGHTS
) -> list[PlayerScore]:
    """Sum touch credits per player, with each player's pace credit."""
    n_players = len(table.players)
    offence, defence = np.zeros(n_players), np.zeros(n_players)
    pace = pace_credit(table_pace(table).sum(axis=0), weights)
    touches = np.zeros(n_players, dtype=np.int64)
    for credit in credits:
        offence[credit.player_index] += IMPACT_SCALE * credit.offence
        defence[credit.player_index] += IMPACT_SCALE * credit.defence
        touches[credit.player_index] += 1
    minutes = live_minutes(table)
    scores = []
    for player in table.players:
        impact = float(offence[player.index] + defence[player.index] + pace[player.index])
        scores.append(
            PlayerScore(
                player_index=player.index,
                name=player.name,
                team=player.team,
                impact=impact,
                offence=float(offence[player.index]),
                defence=float(defence[player.index]),
                n_frames=int(table.time.shape[0]),
                impact_per_minute=impact / minutes if minutes > 0 else 0.0,
                touches=int(touches[player.index]),
                pace=float(pace[player.index]),
            )
        )
    return scores


def impact_so_far(table: FeatureTable, credits: list[TouchCredit]) -> np.ndarray:
    """[T, P] each player's impact up to and including each frame: its touches' credits at
    their frames and its pace frame by frame (the last row is the replay's impact)."""
    per_frame = pace_credit(table_pace(table))
    for credit in credits:
        per_frame[credit.frame, credit.player_index] += IMPACT_SCALE * credit.value
    return np.cumsum(per_frame, axis=0)


@dataclass(frozen=True)
class ScoredReplay:
    """Everything a replay's scores are made of: each team's P(score) per frame [T, 2], the
    credit of every touch, and the per-player sums."""

    p_score: np.ndarray
    credits: list[TouchCredit]
    scores: list[PlayerScore]


def score_replay(table: FeatureTable, model: Predictor) -> ScoredReplay:
    """The one scoring path (``rlimpact score``, ``report``, ``validate``, the scorer)."""
    p_score = team_score_probability(table, predict_table(table, model))
    credits = credit_touches(table, p_score)
    return ScoredReplay(p_score, credits, score_credits(table, credits))


def score_table(table: FeatureTable, model: ImpactModel) -> list[PlayerScore]:
    return score_replay(table, model).scores
