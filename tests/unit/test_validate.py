"""Validation rules: each one rejects what it names and passes real replays."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from services.parser.parse import parse_replay_file
from services.parser.validate import (
    RULES,
    ReplayValidationError,
    parse_valid_replay,
    validate,
    violations,
)
from shared.frames import PLAYER_FIELD, ParsedReplay
from shared.settings import ValidationRules

RULES_DEFAULT = ValidationRules()


@pytest.fixture(scope="module")
def replay(standard_replay) -> ParsedReplay:
    return parse_replay_file(standard_replay.path, standard_replay.sha256)


def test_a_real_replay_passes_every_rule(replay: ParsedReplay):
    assert violations(replay, RULES_DEFAULT) == []
    assert validate(replay, RULES_DEFAULT) is replay


def _broken(replay: ParsedReplay, rule: str) -> ParsedReplay:
    """The replay, damaged so that ``rule`` is the first rule to fire."""
    if rule == "frame_count":
        return dataclasses.replace(
            replay,
            time=replay.time[:5],
            seconds_remaining=replay.seconds_remaining[:5],
            ball=replay.ball[:5],
            cars=replay.cars[:5],
        )
    if rule == "player_count":
        return dataclasses.replace(replay, cars=replay.cars[:, :0], players=[])
    if rule == "duration":
        return dataclasses.replace(
            replay, time=replay.time[0] + (replay.time - replay.time[0]) / 100
        )
    if rule == "finite_values":
        ball = replay.ball.copy()
        ball[10, 0] = np.nan
        return dataclasses.replace(replay, ball=ball)
    if rule == "arena_bounds":
        cars = replay.cars.copy()
        cars[:, :, PLAYER_FIELD["x"]] += 20_000
        cars[:, :, PLAYER_FIELD["demolished"]] = 0
        return dataclasses.replace(replay, cars=cars)
    raise AssertionError(rule)


@pytest.mark.parametrize("rule", list(RULES))
def test_each_rule_rejects_what_it_names(replay: ParsedReplay, rule: str):
    broken = _broken(replay, rule)
    assert violations(broken, RULES_DEFAULT)[0].rule == rule
    with pytest.raises(ReplayValidationError) as caught:
        validate(broken, RULES_DEFAULT)
    assert caught.value.rule == rule
    assert rule in caught.value.reason


def test_limits_are_configurable(replay: ParsedReplay):
    strict = ValidationRules(min_duration_seconds=float(replay.time[-1] - replay.time[0]) + 1)
    assert [v.rule for v in violations(replay, strict)] == ["duration"]


def test_parse_valid_replay_applies_the_rules(standard_replay):
    strict = ValidationRules(min_frames=10**9)
    with pytest.raises(ReplayValidationError, match="frame_count"):
        parse_valid_replay(standard_replay.path, standard_replay.sha256, 10.0, strict)


def test_too_many_cars_at_once_is_rejected_but_substitutes_are_not(replay: ParsedReplay):
    n = len(replay.players)
    doubled = dataclasses.replace(
        replay, cars=np.concatenate([replay.cars, replay.cars], axis=1), players=replay.players * 2
    )
    assert violations(doubled, ValidationRules(max_players=n + 1))[0].rule == "player_count"
    # The same columns, but the copies never on the pitch together with the originals.
    shifted = doubled.cars.copy()
    shifted[:, :n, PLAYER_FIELD["demolished"]] = 1
    substitutes = dataclasses.replace(doubled, cars=shifted)
    assert violations(substitutes, ValidationRules(max_players=n + 1)) == []
