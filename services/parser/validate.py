"""The validation rules a parsed replay must pass before it is scored: the one place they live.

Each rule is a small pure function of the replay and the configured limits
(:class:`shared.settings.ValidationRules`) that returns ``None`` when the replay passes, or a
sentence saying what is wrong. A replay that fails is dead-lettered with the rule's name.
Two more rules are enforced by the extractor itself, which cannot build frames without them:
``network_frames`` (a header-only file) and ``ball_present`` (a mode with no ball, such as
knockout); see ``EXTRACTION_RULES`` in parse.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.parser.parse import ReplayParseError, parse_replay_file
from shared.frames import BALL_FIELD, PLAYER_FIELD, ParsedReplay
from shared.settings import ValidationRules

Rule = Callable[[ParsedReplay, ValidationRules], "str | None"]


@dataclass(frozen=True)
class RuleViolation:
    rule: str
    detail: str


class ReplayValidationError(ReplayParseError):
    """The replay decoded, but breaks a validation rule; ``rule`` names it."""

    def __init__(self, violation: RuleViolation) -> None:
        super().__init__(
            f"validation rule '{violation.rule}' failed: {violation.detail}", violation.rule
        )


def frame_count(replay: ParsedReplay, rules: ValidationRules) -> str | None:
    if replay.n_frames < rules.min_frames:
        return f"{replay.n_frames} sampled frames, fewer than {rules.min_frames}"
    return None


def player_count(replay: ParsedReplay, rules: ValidationRules) -> str | None:
    """Players who drove a car; the maximum counts cars on the pitch at once, since players
    who leave and are replaced during a match each have a column of their own."""
    n = len(replay.players)
    if n < rules.min_players:
        return f"{n} players drove a car, fewer than {rules.min_players}"
    on_pitch = replay.cars[:, :, PLAYER_FIELD["demolished"]] == 0
    most = int(on_pitch.sum(axis=1).max()) if replay.n_frames else 0
    if most > rules.max_players:
        return f"{most} cars on the pitch at once, more than {rules.max_players}"
    return None


def duration(replay: ParsedReplay, rules: ValidationRules) -> str | None:
    seconds = float(replay.time[-1] - replay.time[0]) if replay.n_frames else 0.0
    if seconds < rules.min_duration_seconds:
        return f"{seconds:.1f} s of play, shorter than {rules.min_duration_seconds:g} s"
    if seconds > rules.max_duration_seconds:
        return f"{seconds:.0f} s of play, longer than {rules.max_duration_seconds:g} s"
    return None


def finite_values(replay: ParsedReplay, _: ValidationRules) -> str | None:
    arrays = {
        "time": replay.time,
        "seconds_remaining": replay.seconds_remaining,
        "ball": replay.ball,
        "cars": replay.cars,
    }
    # A finite sum means no NaN or Inf (they propagate); count only when the sum is not finite.
    suspect = {name: a for name, a in arrays.items() if not np.isfinite(np.sum(a))}
    bad = {name: int(np.size(a) - np.isfinite(a).sum()) for name, a in suspect.items()}
    bad = {name: n for name, n in bad.items() if n}
    if bad:
        return "non-finite values (NaN/Inf) in " + ", ".join(f"{k} ({n})" for k, n in bad.items())
    return None


def _outside_arena(rows: np.ndarray, field: dict[str, int], rules: ValidationRules) -> np.ndarray:
    """Whether each position (``field`` names the x, y, z of the last axis) lies outside the box."""
    z = rows[..., field["z"]]
    return (
        (np.abs(rows[..., field["x"]]) > rules.arena_half_width)
        | (np.abs(rows[..., field["y"]]) > rules.arena_half_length)
        | (z < rules.arena_min_z)
        | (z > rules.arena_max_z)
    )


def arena_bounds(replay: ParsedReplay, rules: ValidationRules) -> str | None:
    present = replay.cars[:, :, PLAYER_FIELD["demolished"]] == 0
    outside = int(_outside_arena(replay.ball, BALL_FIELD, rules).sum())
    outside += int((_outside_arena(replay.cars, PLAYER_FIELD, rules) & present).sum())
    positions = replay.n_frames + int(present.sum())
    share = outside / positions if positions else 0.0
    if share > rules.max_out_of_bounds_fraction:
        return (
            f"{share:.1%} of ball and car positions lie outside the arena box, more than "
            f"{rules.max_out_of_bounds_fraction:.1%}"
        )
    return None


# In order: a replay is reported under the first rule it breaks.
RULES: dict[str, Rule] = {
    "frame_count": frame_count,
    "player_count": player_count,
    "duration": duration,
    "finite_values": finite_values,
    "arena_bounds": arena_bounds,
}


def violations(replay: ParsedReplay, rules: ValidationRules) -> list[RuleViolation]:
    found = ((name, rule(replay, rules)) for name, rule in RULES.items())
    return [RuleViolation(name, detail) for name, detail in found if detail is not None]


def validate(replay: ParsedReplay, rules: ValidationRules) -> ParsedReplay:
    """Return the replay unchanged, or raise :class:`ReplayValidationError` for the first rule."""
    if found := violations(replay, rules):
        raise ReplayValidationError(found[0])
    return replay


def parse_valid_replay(
    path: Path, replay_id: str, fps: float, rules: ValidationRules
) -> ParsedReplay:
    """Parse and validate: what the parser service and the offline CLI both run."""
    return validate(parse_replay_file(path, replay_id, fps), rules)
