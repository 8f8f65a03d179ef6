"""Reliability and predictive validity (services/trainer/validity.py) on synthetic matches whose
answer is known, match_parts on a real replay, the header's scoreboard, and `rlimpact validate`."""

from __future__ import annotations

import json
import struct
from dataclasses import replace

import numpy as np
import pytest

from services.cli.validate import SHIPPED_IMPACT, header_points
from services.parser.header import player_stats, player_stats_of_file
from services.parser.parse import parse_replay_file
from services.trainer.rating_fit import FOLDS
from services.trainer.statistics import pearson, ranks, spearman, standardised
from services.trainer.validity import (
    MatchParts,
    across_match_reliability,
    match_parts,
    part_bounds,
    predictive_validity,
    split_half_reliability,
)
from shared.features.batch import featurize
from shared.impact import IMPACT_SCALE, TouchCredit, credit_touches, live_minutes
from shared.scope import in_scope
from tests.unit.test_cli import _cli


def test_ranks_share_ties_and_spearman_is_pearson_of_ranks():
    assert ranks(np.array([10.0, 30.0, 20.0, 20.0])).tolist() == [1.0, 4.0, 2.5, 2.5]
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -np.exp(x)) == pytest.approx(-1.0)
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert np.isnan(pearson(x[:2], x[:2]))


def test_standardised_per_group():
    values = np.array([1.0, 3.0, 100.0, 300.0])
    z = standardised(values, np.array([1, 1, 2, 2]))
    assert z.tolist() == pytest.approx([-1.0, 1.0, -1.0, 1.0])


def _synthetic_matches(
    rng: np.random.Generator,
    n_matches: int,
    skill_share: float,
    goal_link: float,
    n_parts: int = 2,
) -> list[MatchParts]:
    """Matches of 1v1, 2v2 and 3v3 whose ratings per minute are a player's skill plus noise,
    skill_share of the variance being skill, at a level that grows with the team size (which
    must not count as reliability); the team with more skill scores more in every part with
    ``goal_link``. 'noise' is pure noise; 'touches' the skill plus noise too."""
    matches = []
    for m in range(n_matches):
        size = 1 + m % 3
        teams = np.repeat([0, 1], size)
        skill = rng.normal(0, np.sqrt(skill_share), 2 * size)
        level = 10.0 * size
        minutes = np.full(n_parts, 2.5)
        impact = (
            level + skill[None, :] + rng.normal(0, np.sqrt(1 - skill_share), (n_parts, 2 * size))
        )
        edge = skill[teams == 0].sum() - skill[teams == 1].sum()
        rate = np.clip(1.0 + goal_link * np.array([edge, -edge]), 0.05, None)
        goals = rng.poisson(rate[None, :] * np.ones((n_parts, 1)))
        totals = {
            "impact": impact * minutes[:, None],
            "noise": rng.normal(level, 1.0, (n_parts, 2 * size)) * minutes[:, None],
        }
        matches.append(
            MatchParts(
                match_id=f"m{m}",
                team_size=size,
                teams=teams,
                player_keys=tuple(f"name:p{m}-{i}" for i in range(2 * size)),
                minutes=minutes,
                present=np.ones((n_parts, 2 * size), dtype=bool),
                player_totals=totals,
                p_score=np.full((n_parts, 2), 0.05),
                goals=goals.astype(float),
            )
        )
    return matches


def test_split_half_reliability_recovers_the_share_of_skill_within_team_size():
    matches = _synthetic_matches(np.random.default_rng(0), 600, skill_share=0.5, goal_link=0.0)
    result = split_half_reliability(matches, ratings=("impact", "noise"), rounds=200)
    # the two halves share the skill: r = var(skill) / (var(skill) + var(noise)) = 0.5
    assert result.pooled["impact"].value == pytest.approx(0.5, abs=0.06)
    assert result.pooled["impact"].low < 0.5 < result.pooled["impact"].high
    assert abs(result.pooled["noise"].value) < 0.08
    # mixing team sizes, whose levels differ, inflates r; standardising per size does not
    assert result.raw["noise"].value > 0.9
    assert set(result.by_team_size) == {1, 2, 3}
    for by_size in result.by_team_size.values():
        assert by_size["impact"].value == pytest.approx(0.5, abs=0.12)
    assert result.versus["impact - noise"].low > 0.3


def test_predictive_validity_ranks_the_informative_edge_above_noise():
    matches = _synthetic_matches(np.random.default_rng(1), 400, skill_share=0.8, goal_link=0.6)
    result = predictive_validity(
        matches, metrics=("impact", "noise", "goal difference"), rounds=200
    )
    assert result.split == 1
    assert result.spearman["impact"].low > 0.2
    assert result.spearman["noise"].low < 0 < result.spearman["noise"].high
    assert result.versus["impact - noise"].low > 0.1
    # goals so far forecast later goals too, through the same skill, less sharply than skill
    assert 0 < result.spearman["goal difference"].value < result.spearman["impact"].value


def test_predictive_validity_of_later_splits_uses_the_earlier_parts_only():
    matches = _synthetic_matches(
        np.random.default_rng(2), 200, skill_share=0.8, goal_link=0.6, n_parts=4
    )
    result = predictive_validity(matches, metrics=("goal difference",), split=3, rounds=0)
    later = np.concatenate(
        [[m.goals[3, 0] - m.goals[3, 1], m.goals[3, 1] - m.goals[3, 0]] for m in matches]
    )
    earlier = np.concatenate(
        [[g := m.goals[:3, 0].sum() - m.goals[:3, 1].sum(), -g] for m in matches]
    )
    assert result.spearman["goal difference"].value == pytest.approx(spearman(earlier, later))
    assert np.isnan(result.spearman["goal difference"].low)  # no resamples asked for


def test_across_match_reliability_follows_recurring_players_by_platform_id():
    rng = np.random.default_rng(3)
    skill = rng.normal(0, 1, 40)
    matches = []
    for m in range(120):
        players = rng.choice(40, 4, replace=False)
        rates = skill[players] + rng.normal(0, 1, 4)  # reliability of one match: 0.5
        matches.append(
            MatchParts(
                match_id=f"m{m}",
                team_size=2,
                teams=np.array([0, 0, 1, 1]),
                player_keys=tuple(f"Steam:{p}" for p in players),
                minutes=np.array([2.0, 2.0]),
                present=np.ones((2, 4), dtype=bool),
                player_totals={"impact": np.tile(rates * 2.0, (2, 1))},
                p_score=np.zeros((2, 2)),
                goals=np.zeros((2, 2)),
                whole_match={"points": np.full(4, np.nan)},
            )
        )
    result = across_match_reliability(matches, ("impact", "points"), rounds=100)
    # 12 appearances a player, 6 against 6: Spearman-Brown of 0.5 over 6 matches is 0.86
    assert result["impact"].value == pytest.approx(0.86, abs=0.1)
    assert result["impact"].n == 40
    assert np.isnan(result["points"].value)  # no player has it
    renamed = [replace(m, player_keys=tuple(f"name:{k}" for k in m.player_keys)) for m in matches]
    assert across_match_reliability(renamed, ("impact",), rounds=10)["impact"].n == 0


def test_part_bounds_cut_live_frames_evenly():
    live = np.array([False, True, True, False, False, True, True, True, True, False])
    bounds = part_bounds(live, 2)
    assert bounds[0] == 0 and bounds[-1] == live.shape[0]
    halves = [live[bounds[i] : bounds[i + 1]].sum() for i in range(2)]
    assert halves == [3, 3]


@pytest.fixture(scope="module")
def replay(standard_replay):
    return standard_replay


@pytest.fixture(scope="module")
def table(replay):
    return featurize(parse_replay_file(replay.path, replay.sha256))


def test_match_parts_splits_a_real_replay_into_what_its_halves_hold(table):
    rng = np.random.default_rng(4)
    p_score = rng.uniform(0, 0.3, (table.time.shape[0], 2))
    credits = credit_touches(table, p_score)
    parts = match_parts(table, p_score, credits, 2)
    assert parts.minutes.sum() == pytest.approx(live_minutes(table))
    assert parts.minutes[0] == pytest.approx(parts.minutes[1], rel=0.01)
    assert parts.goals.sum() == len(table.goals)
    assert parts.team_size == 3
    total = sum(IMPACT_SCALE * c.value for c in credits)
    assert parts.player_totals["impact"].sum() == pytest.approx(total)
    assert parts.player_totals["touches"].sum() == len(credits) == table.touched.sum()
    cut = part_bounds(table.live, 2)[1]
    first = [c for c in credits if c.frame < cut]
    assert parts.player_totals["touches"][0].sum() == len(first)
    whole = parts.rates("impact")
    assert whole.sum() == pytest.approx(total / live_minutes(table))


def test_match_parts_credits_a_touch_to_its_player_and_part(table):
    live_frames = np.flatnonzero(table.live)
    late = int(live_frames[-5])
    credits = [
        TouchCredit(
            frame=late, player_index=2, team=table.players[2].team, offence=0.1, defence=0.2
        )
    ]
    parts = match_parts(table, np.zeros((table.time.shape[0], 2)), credits, 4)
    expected = np.zeros((4, len(table.players)))
    expected[3, 2] = IMPACT_SCALE * 0.3
    pace = parts.player_totals["pace"]
    assert parts.player_totals["impact"] == pytest.approx(expected + pace)
    assert parts.player_totals["offence"] + parts.player_totals["defence"] == pytest.approx(
        expected
    )
    assert parts.player_totals["defence"][3, 2] == pytest.approx(IMPACT_SCALE * 0.2)
    assert np.abs(pace).max() > 0 and pace.sum(axis=1) == pytest.approx(0.0, abs=1e-9)


def _text(value: str) -> bytes:
    raw = value.encode() + b"\0"
    return struct.pack("<i", len(raw)) + raw


def _property(name: str, kind: str, value: bytes) -> bytes:
    return _text(name) + _text(kind) + struct.pack("<Q", len(value)) + value


def test_player_stats_of_a_written_header():
    player = (
        _property("Name", "StrProperty", _text("Ann"))
        + _property(
            "Platform", "ByteProperty", _text("OnlinePlatform") + _text("OnlinePlatform_Steam")
        )
        + _property("OnlineID", "QWordProperty", struct.pack("<Q", 7656))
        + _property("Team", "IntProperty", struct.pack("<i", 1))
        + _property("Score", "IntProperty", struct.pack("<i", 420))
        + _property("Goals", "IntProperty", struct.pack("<i", 2))
        + _property("bBot", "BoolProperty", b"\0")
        + _text("None")
    )
    stats = _text("PlayerStats") + _text("ArrayProperty") + struct.pack("<Qi", 0, 1) + player
    body = (
        struct.pack("<IIII", 0, 0, 868, 32)
        + struct.pack("<I", 10)
        + _text("TAGame.Replay_Soccar_TA")
        + _property("TeamSize", "IntProperty", struct.pack("<i", 2))
        + _property("Dummy", "ByteProperty", _text("None") + b"\x01")
        + _property("RecordFPS", "FloatProperty", struct.pack("<f", 30.0))
        + stats
        + _text("None")
    )
    (only,) = player_stats(body)
    assert (only.name, only.team, only.score, only.goals) == ("Ann", 1, 420, 2)
    assert only.platform_id == "Steam:7656"
    assert player_stats(body[:60]) == []  # cut short: no stats, no exception


def test_header_points_match_the_players_of_a_real_replay(replay, table):
    stats = player_stats_of_file(replay.path)
    points = header_points(table, stats)
    if not stats:
        pytest.skip("this replay's header has no PlayerStats")
    assert np.isfinite(points).sum() >= len(table.players) - 1
    for player in table.players:
        if np.isfinite(points[player.index]):
            row = next(
                s
                for s in stats
                if s.platform_id == player.platform_id
                or (s.name, s.team) == (player.name, player.team)
            )
            assert row.score == points[player.index]


def test_validate_command_writes_json_and_png(tmp_path, good_replays):
    chosen = [r for r in good_replays if r.team_size == 3 and (r.goals or 0) >= 4][:4]
    result = _cli(
        "validate", *(str(r.path) for r in chosen), "--out", str(tmp_path), "--rounds", "20"
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "validity.json").read_text())
    tables = [featurize(parse_replay_file(r.path, r.sha256)) for r in chosen]
    usable = [t for t in tables if in_scope(t.map_name, t.game_mode) and live_minutes(t) >= 2]
    assert summary["matches"] == len(usable) >= 3
    auc = summary["p_score_roc_auc"]
    assert 0.5 < auc["value"] < 1 and auc["low"] <= auc["value"] <= auc["high"]
    assert auc["rows"] == 2 * sum(int(t.live.sum()) for t in usable)
    pooled = summary["split_half_reliability"]["pooled_standardised"]
    assert set(pooled) == {"impact", "offence", "defence", "pace", "touches", SHIPPED_IMPACT}
    assert len(summary["rating_weights"]["cross_fitted"]) == min(FOLDS, len(usable))
    halves, *quarters = summary["predictive_validity"]
    assert set(halves["spearman"]) == {
        "impact",
        SHIPPED_IMPACT,
        "offence",
        "defence",
        "pace",
        "touches",
        "mean P(score)",
        "goal difference",
    }
    assert [q["earlier_parts"] for q in quarters] == [1, 3]
    assert -1 <= halves["spearman"]["impact"]["value"] <= 1
    assert "split-half reliability" in result.stdout and "impact - touches" in result.stdout
    assert (tmp_path / "validity.png").read_bytes()[:4] == b"\x89PNG"
