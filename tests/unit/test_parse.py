from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.parser.parse import ReplayParseError, align_goals, parse_replay_file
from shared.frames import PLAYER_FIELD, ParsedReplay


@pytest.fixture(scope="module")
def parsed(standard_replay) -> ParsedReplay:
    return parse_replay_file(standard_replay.path, standard_replay.sha256, fps=10.0)


def test_standard_replay_has_both_teams_and_all_frames(parsed: ParsedReplay, standard_replay):
    assert parsed.team_size == 3
    assert [p.team for p in parsed.players].count(0) >= 3
    assert [p.team for p in parsed.players].count(1) >= 3
    assert parsed.cars.shape == (parsed.n_frames, len(parsed.players), len(PLAYER_FIELD))
    assert np.all(np.diff(parsed.time) > 0), "10 fps samples are in time order"
    assert parsed.n_frames == pytest.approx((parsed.time[-1] - parsed.time[0]) * 10 + 1, abs=2)


def test_boost_is_a_fraction_and_flags_are_binary(parsed: ParsedReplay):
    boost = parsed.cars[:, :, PLAYER_FIELD["boost"]]
    assert boost.min() >= 0.0 and boost.max() <= 1.0 and boost.max() > 0.9
    for flag in ("jumping", "demolished"):
        assert set(np.unique(parsed.cars[:, :, PLAYER_FIELD[flag]])) <= {0.0, 1.0}


def test_goals_match_the_header_in_order_and_time(parsed: ParsedReplay, standard_replay):
    assert len(parsed.goals) == standard_replay.goals
    times = [g.time for g in parsed.goals]
    assert times == sorted(times)
    assert parsed.time[0] < times[0] and times[-1] <= parsed.time[-1]


def test_frames_file_round_trips(parsed: ParsedReplay, tmp_path: Path):
    parsed.save(tmp_path / "frames.npz")
    loaded = ParsedReplay.load(tmp_path / "frames.npz")
    assert loaded.players == parsed.players and loaded.goals == parsed.goals
    np.testing.assert_array_equal(loaded.cars, parsed.cars)
    np.testing.assert_array_equal(loaded.ball, parsed.ball)


def test_every_bad_replay_is_rejected_with_a_reason(bad_replays):
    assert len(bad_replays) == 7
    for replay in bad_replays:
        with pytest.raises(ReplayParseError) as error:
            parse_replay_file(replay.path, replay.sha256)
        assert error.value.reason.startswith("undecodable replay: ")
        assert len(error.value.reason) > len("undecodable replay: ")


def test_align_goals_takes_the_next_candidate_of_the_scoring_team():
    header = [(1, "a"), (0, "b"), (0, "c")]
    candidates = [(10.0, 1), (20.0, 1), (30.0, 0), (40.0, 0)]
    goals = align_goals(header, candidates)
    assert [(g.time, g.team, g.scorer) for g in goals] == [
        (10.0, 1, "a"),
        (30.0, 0, "b"),
        (40.0, 0, "c"),
    ]


def test_align_goals_drops_header_goals_without_a_time():
    assert align_goals([(0, "a"), (1, "b")], [(5.0, 1)])[0].scorer == "b"
    assert len(align_goals([(0, "a"), (1, "b")], [(5.0, 1)])) == 1
