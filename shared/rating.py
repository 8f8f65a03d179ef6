"""How a touch's parts are weighed into impact: the rating's recipe. Pure: no I/O.

Each touch (``shared.impact.credit_touches``) is measured in four parts, from the model's
P(team scores within the horizon) of both teams, P_for and P_against (the touch's team's and
the other's), over the frames from the touch to the next touch or the end of play:

- *change*: how the touch moved P_for (up is good) and P_against (down is good) by the next
  touch; a goal sets them to 1 and 0, so the touch before a goal takes the goal;
- *threat*: the sum over those frames of log(P_for / P_against) x the frame step / horizon: how
  many times more likely its team was to score than to concede while its possession lasted,
  on a log scale (the offence part log(P_for / REFERENCE), the defence part
  log(REFERENCE / P_against), REFERENCE being the model's typical P(score));
- *held*: the expected goals for meanwhile, the sum of P_for x step / horizon;
- *touch*: a constant per touch (being involved).

Besides its touches, a player is credited for *pace*, frame by frame: over the live frames it
is on the pitch, its speed above the mean speed of the cars on the pitch (in units of the
car's top speed, the feature's scale) x the frame step / horizon. Pace is what the touches
miss: how much of the pitch a player covers (rotating, challenging, shadowing, supporting),
and a team that outpaces the other in one part of a match tends to outscore it in the next
(README: *How far impact can be trusted*). Over the cars on the pitch in a frame it sums to 0.

A touch's credit is ``scale x (threat + change x Δ + held x xG + touch)``, a player's pace
``scale x pace x its pace``. The weights are
fitted (``rlimpact fit-rating``, ``services/trainer/rating_fit.py``) to what a team's edge in
the credit over one part of a match forecasts, the goal difference of the later part, while
keeping a player's rating per minute as steady from one half of a match to the other as
touches per minute are; ``scale`` then puts the credit in goals: a team's edge in impact per
minute (/100) is its least-squares forecast of its later goal difference per minute.
``rlimpact validate`` measures the rating with weights fitted without the match it judges
(cross-fitted), README: *How far impact can be trusted*.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

# exp(mean log P(score)) over the live frames of corpus + more under the shipped model
# (`rlimpact fit-rating` prints it): the level from which the threat's offence and defence
# parts are counted (they sum to the threat whatever it is)
REFERENCE_P_SCORE = 0.066


@dataclass(frozen=True)
class RatingWeights:
    """A touch's credit in goals: ``scale x (threat + change x Δ + held x xG + touch)``; a
    player's pace credit: ``scale x pace x`` its pace."""

    change: float  # per goal of change in P_for - P_against by the next touch
    held: float  # per expected goal for while the possession lasts
    touch: float  # per touch
    pace: float = 0.0  # per horizon of play at the top speed above the cars' mean
    scale: float = 1.0  # the whole in goals of the later goal difference it forecasts
    reference: float = REFERENCE_P_SCORE

    def scaled(self, scale: float) -> RatingWeights:
        return replace(self, scale=scale)


# From `rlimpact fit-rating` on corpus + more (158 matches) with the shipped model
SHIPPED_WEIGHTS = RatingWeights(change=1.7, held=2.0, touch=0.13, pace=4.0, scale=0.0534)


@dataclass(frozen=True)
class TouchParts:
    """A touch's parts, in goals (the threat: in log-ratio x horizons)."""

    change_for: float  # rise of P_for by the next touch (the goal: to 1)
    change_against: float  # fall of P_against meanwhile
    threat_for: float  # sum of log(P_for / reference) x step / horizon
    threat_against: float  # sum of log(reference / P_against) x step / horizon
    held_for: float  # expected goals for meanwhile
    held_against: float  # expected goals against meanwhile (measured, not weighed)


NO_PARTS = TouchParts(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)  # a credit made without them (tests)


def offence_defence(parts: TouchParts, weights: RatingWeights) -> tuple[float, float]:
    """The touch's credit in goals, split: offence (its team's own scoring) and defence (the
    other team's)."""
    offence = (
        parts.threat_for + weights.change * parts.change_for + weights.held * parts.held_for
    ) + weights.touch
    defence = parts.threat_against + weights.change * parts.change_against
    return weights.scale * offence, weights.scale * defence


def threat(p_score: np.ndarray, reference: float) -> np.ndarray:
    """[T, 2] log(P(team k scores) / reference), P clipped away from 0 and 1."""
    return np.log(np.clip(p_score, 1e-6, 1.0) / reference)
