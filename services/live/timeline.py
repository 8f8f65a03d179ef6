"""Each live match's P(score) over the match, for the live page's chart and the overlay. Pure.

A point is (match seconds, P(blue scores), P(orange scores)) from one ``scores.live`` update;
a goal is (match seconds, team), found where a team's goal count goes up. Match seconds are
read off the game clock: ``REGULATION_SECONDS - seconds_remaining`` in regulation, and
``REGULATION_SECONDS + seconds_remaining`` in overtime, where the clock counts up. An update
without a clock keeps the previous point's time. A match keeps at most ``MAX_POINTS``
points: beyond that every other point is dropped (goals are all kept), so a long match costs
the same memory and bytes as a short one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from shared.events import LiveScore

REGULATION_SECONDS = 300.0
MAX_POINTS = 600


@dataclass(frozen=True)
class TimelinePoint:
    seconds: float
    p_blue: float
    p_orange: float


@dataclass(frozen=True)
class TimelineGoal:
    seconds: float
    team: int  # 0 blue, 1 orange


def match_seconds(score: LiveScore, previous: float | None) -> float:
    """Seconds into the match by the game clock (``previous`` when the update has none)."""
    remaining = score.seconds_remaining
    if remaining is None:
        return previous if previous is not None else 0.0
    if score.overtime:
        return REGULATION_SECONDS + remaining
    return max(0.0, REGULATION_SECONDS - remaining)


def team_probabilities(score: LiveScore) -> tuple[float, float]:
    """P(blue scores), P(orange scores) within the horizon: every player of a team carries
    their team's value; a team with no player gets 0."""
    by_team = {player.team: player.p_score for player in score.players}
    return by_team.get(0, 0.0), by_team.get(1, 0.0)


@dataclass
class MatchTimeline:
    match_id: str
    points: list[TimelinePoint] = field(default_factory=list)
    goals: list[TimelineGoal] = field(default_factory=list)
    goal_counts: tuple[int, int] = (0, 0)

    def add(self, score: LiveScore) -> tuple[TimelinePoint, list[TimelineGoal]]:
        """Append the update's point; return it and the goals it shows for the first time."""
        previous = self.points[-1].seconds if self.points else None
        point = TimelinePoint(match_seconds(score, previous), *team_probabilities(score))
        counts = (score.blue_goals, score.orange_goals)
        new_goals = [
            TimelineGoal(point.seconds, team)
            for team in (0, 1)
            for _ in range(max(0, counts[team] - self.goal_counts[team]))
        ]
        self.goal_counts = (
            max(counts[0], self.goal_counts[0]),
            max(counts[1], self.goal_counts[1]),
        )
        self.goals.extend(new_goals)
        self.points.append(point)
        if len(self.points) > MAX_POINTS:
            self.points = self.points[:-1:2] + self.points[-1:]
        return point, new_goals


def _point_json(point: TimelinePoint) -> list[float]:
    return [round(point.seconds, 2), round(point.p_blue, 4), round(point.p_orange, 4)]


def _goal_json(goal: TimelineGoal) -> list[float]:
    return [round(goal.seconds, 2), goal.team]


def timeline_json(timeline: MatchTimeline) -> str:
    """The whole timeline: ``{"match_id", "points": [[s, p_blue, p_orange]…], "goals":
    [[s, team]…]}``."""
    return json.dumps(
        {
            "match_id": timeline.match_id,
            "points": [_point_json(p) for p in timeline.points],
            "goals": [_goal_json(g) for g in timeline.goals],
        }
    )


def point_json(match_id: str, point: TimelinePoint, goals: list[TimelineGoal]) -> str:
    """One update's part of the timeline, in the same shape (one point, its new goals)."""
    goals_json = [_goal_json(g) for g in goals]
    return json.dumps({"match_id": match_id, "points": [_point_json(point)], "goals": goals_json})
