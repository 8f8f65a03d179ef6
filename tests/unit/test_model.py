"""Train, export and score on real replays: torch and onnxruntime must agree; touch credits."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from services.parser.parse import parse_replay_file
from services.trainer.config import TrainConfig
from services.trainer.data import split_by_replay, stack_rows
from services.trainer.evaluate import BALL_INPUTS
from services.trainer.export import export_onnx
from services.trainer.network import ImpactNet
from services.trainer.train import train_impact_model
from shared.events import GoalInfo, PlayerInfo
from shared.features.batch import featurize
from shared.features.table import FEATURE_NAMES, MIRROR_SIGNS, N_FEATURES, FeatureTable
from shared.impact import (
    IMPACT_SCALE,
    credit_touches,
    impact_so_far,
    live_minutes,
    score_credits,
    score_replay,
    score_table,
    table_pace,
    team_score_probability,
)
from shared.model import ImpactModel, ModelSchemaError, predict_table
from shared.rating import SHIPPED_WEIGHTS, offence_defence


@pytest.fixture(scope="module")
def tables(good_replays) -> list[FeatureTable]:
    chosen = [r for r in good_replays if (r.goals or 0) >= 2 and (r.team_size or 0) >= 2][:4]
    return [featurize(parse_replay_file(r.path, r.sha256)) for r in chosen]


@pytest.fixture(scope="module")
def exported(tables, tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    result = train_impact_model(tables, TrainConfig().with_fit(epochs=1), progress=False)
    path = tmp_path_factory.mktemp("model") / "impact.onnx"
    export_onnx(result.model, path, "impact-test")
    return result.model, path


def test_split_is_by_replay_and_disjoint(tables):
    train, val = split_by_replay(tables, val_fraction=0.25, seed=0)
    assert len(val) == 1 and len(train) == 3
    assert not {t.replay_id for t in train} & {t.replay_id for t in val}


def test_training_rows_are_live_frames_only(tables):
    features, labels = stack_rows(tables[:1])
    table = tables[0]
    assert len(features) == table.live.sum() * len(table.players) < table.features[..., 0].size
    np.testing.assert_array_equal(features, table.features[table.live].reshape(-1, N_FEATURES))
    np.testing.assert_array_equal(labels[:, 0], table.label_score[table.live].reshape(-1))
    assert len(stack_rows(tables[:1], stride=3)[0]) < len(features) / 2


def test_auxiliary_heads_stay_out_of_the_forecast(tables):
    net = ImpactNet(hidden=(8,), aux_outputs=6).eval()
    rows = torch.from_numpy(tables[0].features.reshape(-1, N_FEATURES)[:100].copy())
    with torch.no_grad():
        assert net.all_logits(rows).shape == (100, 8)
        assert torch.equal(net(rows), torch.sigmoid(net.all_logits(rows)[:, :2]))


@pytest.mark.parametrize("inputs", [None, BALL_INPUTS])
def test_a_mirrored_net_forecasts_the_mirrored_pitch_alike(tables, inputs):
    rows = torch.from_numpy(tables[0].features.reshape(-1, N_FEATURES)[:500].copy())
    flipped = rows * torch.from_numpy(MIRROR_SIGNS)
    torch.manual_seed(0)
    plain = ImpactNet(hidden=(8,), inputs=inputs, aux_outputs=2).eval()
    mirrored = ImpactNet(hidden=(8,), inputs=inputs, aux_outputs=2, mirrored=True).eval()
    mirrored.load_state_dict(plain.state_dict())
    with torch.no_grad():
        assert not torch.allclose(plain.all_logits(rows), plain.all_logits(flipped))
        both = (plain.all_logits(rows) + plain.all_logits(flipped)) / 2
        torch.testing.assert_close(mirrored.all_logits(rows), both)
        torch.testing.assert_close(mirrored.all_logits(flipped), both)


def test_onnx_matches_torch(exported, tables):
    model, path = exported
    rows = tables[0].features.reshape(-1, N_FEATURES)[:5000]
    with torch.no_grad():
        expected = model(torch.from_numpy(rows)).numpy()
    got = ImpactModel(path).predict(rows)
    assert np.max(np.abs(got - expected)) <= 1e-4


def test_a_ball_only_net_reads_nothing_but_the_ball(tables):
    net = ImpactNet(inputs=BALL_INPUTS, hidden=(8,)).eval()
    rows = torch.from_numpy(tables[0].features.reshape(-1, N_FEATURES)[:500].copy())
    scrambled = rows.clone()
    others = [i for i, name in enumerate(FEATURE_NAMES) if name not in BALL_INPUTS]
    scrambled[:, others] = torch.randn(len(rows), len(others))
    with torch.no_grad():
        assert torch.equal(net(rows), net(scrambled))
        scrambled[:, FEATURE_NAMES.index("ball_y")] += 1.0
        assert not torch.equal(net(rows), net(scrambled))


def test_one_score_per_player(exported, tables):
    _, path = exported
    model = ImpactModel(path)
    assert model.version == "impact-test"
    table = tables[0]
    scores = score_table(table, model)
    assert [s.player_index for s in scores] == [p.index for p in table.players]
    assert sum(s.touches for s in scores) == int(table.touched.sum()) > 0
    for s in scores:
        assert np.isfinite(s.impact) and s.impact == pytest.approx(s.offence + s.defence + s.pace)
        assert s.impact_per_minute == pytest.approx(s.impact / live_minutes(table))


def test_impact_so_far_ends_at_each_players_impact(exported, tables):
    """The report's impact over time: touch credits as steps, pace as the drift between them,
    ending at the player table's impact."""
    _, path = exported
    table = tables[0]
    scored = score_replay(table, ImpactModel(path))
    so_far = impact_so_far(table, scored.credits)
    assert so_far.shape == (table.time.shape[0], len(table.players))
    assert so_far[-1] == pytest.approx([s.impact for s in scored.scores], abs=1e-6)
    drift = np.diff(so_far, axis=0)
    touched = {c.frame for c in scored.credits}
    between = [f + 1 not in touched for f in range(drift.shape[0])]
    assert np.abs(drift[between]).max() < 1.0, "no jumps between touches: only pace"


def test_touch_credits_add_up_to_how_each_segment_ended(exported, tables):
    """Each touch is credited until the next one, so the parts chain: per segment, team 0's
    changes minus team 1's equal the change of V0 = P(0 scores) - P(1 scores) from before the
    first touch to the segment's end, where a goal makes V0 = +1 or -1; the held values add up
    to V0's goal rate and the threats to log(P(0 scores) / P(1 scores)) over the frames from
    the first touch on; and the players' impact is the weighed sum of them."""
    _, path = exported
    table = tables[0]
    p_score = team_score_probability(table, predict_table(table, ImpactModel(path)))
    credits = credit_touches(table, p_score)
    value = p_score[:, 0] - p_score[:, 1]
    log_ratio = np.log(p_score[:, 0] / p_score[:, 1])
    edges = np.diff(np.r_[0, table.live.astype(int), 0])
    expected = 0.0
    goal_at = {int(np.searchsorted(table.time, g.time)): g.team for g in table.goals}
    first_touch = {}
    for start, stop in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
        touched = np.flatnonzero(table.touched[start:stop].any(axis=1)) + start
        if not touched.size:
            continue
        end = {0: 1.0, 1: -1.0}.get(goal_at.get(int(stop), -1), value[stop - 1])
        expected += end - value[max(touched[0] - 1, start)]
        first_touch[int(touched[0])] = int(stop)
    sign = {0: 1.0, 1: -1.0}
    parts = [(sign[c.team], c.parts) for c in credits]
    change = sum(k * (p.change_for + p.change_against) for k, p in parts)
    assert change == pytest.approx(expected, abs=1e-9)
    step = float(np.median(np.diff(table.time)))
    held = sum(k * (p.held_for - p.held_against) for k, p in parts)
    rate = sum(value[a:b].sum() for a, b in first_touch.items()) * step / 10.0
    assert held == pytest.approx(rate, abs=1e-9)
    threat = sum(k * (p.threat_for + p.threat_against) for k, p in parts)
    ratio = sum(log_ratio[a:b].sum() for a, b in first_touch.items()) * step / 10.0
    assert threat == pytest.approx(ratio, abs=1e-6)
    w = SHIPPED_WEIGHTS
    held_for = sum(k * p.held_for for k, p in parts)
    touches = sum(k for k, _ in parts)
    pace = table_pace(table)  # [T, P]: zero-sum over the cars on the pitch in every frame
    assert pace.sum(axis=1) == pytest.approx(0.0, abs=1e-9) and np.abs(pace).max() > 0
    teams = np.array([p.team for p in table.players])
    pace_edge = pace[:, teams == 0].sum() - pace[:, teams == 1].sum()
    weighed = w.scale * (threat + w.change * change + w.held * held_for + w.touch * touches)
    weighed += w.scale * w.pace * pace_edge
    scores = score_credits(table, credits)
    by_team = [sum(s.impact for s in scores if s.team == team) for team in (0, 1)]
    assert by_team[0] - by_team[1] == pytest.approx(IMPACT_SCALE * weighed, abs=1e-6)


def _synthetic(touches: list[tuple[int, int]], goal_frame: int | None) -> FeatureTable:
    n = 10
    touched = np.zeros((n, 2), dtype=bool)
    for frame, player in touches:
        touched[frame, player] = True
    time = np.arange(n, dtype=np.float32) * 0.1
    goals = [] if goal_frame is None else [GoalInfo(time=float(time[goal_frame]), team=0)]
    live = np.ones(n, dtype=bool) if goal_frame is None else np.arange(n) < goal_frame
    players = [PlayerInfo(index=0, name="a", team=0), PlayerInfo(index=1, name="b", team=1)]
    return FeatureTable(
        replay_id="synthetic",
        time=time,
        segment=np.zeros(n, dtype=np.int64),
        live=live,
        features=np.zeros((n, 2, N_FEATURES), dtype=np.float32),
        label_score=np.zeros((n, 2), dtype=bool),
        label_concede=np.zeros((n, 2), dtype=bool),
        touched=touched,
        players=players,
        goals=goals,
    )


def test_a_touch_is_credited_from_before_it_to_before_the_next_touch():
    table = _synthetic([(2, 0), (6, 1)], goal_frame=None)
    p_score = np.zeros((10, 2))
    p_score[:, 0] = np.linspace(0.1, 0.55, 10)  # blue's chances rise all along
    p_score[:, 1] = 0.2
    p_score[5, 1] = 0.1  # and orange's dip just before orange touches
    first, second = credit_touches(table, p_score)
    assert (first.player_index, second.player_index) == (0, 1)
    one, two = first.parts, second.parts
    # held: the goal rate P / 10 s over the 0.1 s frames from the touch to the next one
    assert first.held_for == one.held_for == pytest.approx(p_score[2:6, 0].sum() * 0.01)
    assert first.held_against == pytest.approx(p_score[2:6, 1].sum() * 0.01)
    assert second.held_for == pytest.approx(p_score[6:10, 1].sum() * 0.01)  # to the end of play
    assert second.held_against == pytest.approx(p_score[6:10, 0].sum() * 0.01)
    assert one.change_for == pytest.approx(p_score[5, 0] - p_score[1, 0])
    assert one.change_against == pytest.approx(p_score[1, 1] - p_score[5, 1])
    assert two.change_for == pytest.approx(p_score[9, 1] - p_score[5, 1])
    assert two.change_against == pytest.approx(p_score[5, 0] - p_score[9, 0])
    # threat: log(P / the reference P) over the same frames, for and (minus) against
    reference = SHIPPED_WEIGHTS.reference
    assert one.threat_for == pytest.approx(np.log(p_score[2:6, 0] / reference).sum() * 0.01)
    assert one.threat_against == pytest.approx(np.log(reference / p_score[2:6, 1]).sum() * 0.01)
    assert two.threat_for == pytest.approx(np.log(p_score[6:10, 1] / reference).sum() * 0.01)
    for credit in (first, second):
        assert (credit.offence, credit.defence) == offence_defence(credit.parts, SHIPPED_WEIGHTS)


def test_the_touch_before_a_goal_takes_the_goal_and_an_own_goal_costs():
    p_score = np.full((10, 2), 0.2)
    (scorer,) = credit_touches(_synthetic([(3, 0)], goal_frame=8), p_score)
    held = 5 * 0.2 * 0.01  # frames 3 to 7 at 0.2 each side, then the goal
    assert scorer.held_for == pytest.approx(held) == pytest.approx(scorer.held_against)
    assert scorer.parts.change_for == pytest.approx(0.8)
    assert scorer.parts.change_against == pytest.approx(0.2)
    assert scorer.parts.threat_for + scorer.parts.threat_against == pytest.approx(0.0)
    (own_goal,) = credit_touches(_synthetic([(3, 1)], goal_frame=8), p_score)
    assert own_goal.team == 1
    assert own_goal.parts.change_for + own_goal.parts.change_against == pytest.approx(-1.0)
    assert own_goal.value < scorer.value


def test_touches_outside_play_are_not_credited():
    table = _synthetic([(3, 0), (9, 1)], goal_frame=8)
    credits = credit_touches(table, np.full((10, 2), 0.2))
    assert [c.frame for c in credits] == [3]
    half_minute = replace(table, time=table.time * 30)  # 8 live frames, 3 s apart: 24 s
    (blue, _) = score_credits(half_minute, credits)
    assert blue.impact_per_minute == pytest.approx(blue.impact / 0.4)


def test_model_for_another_feature_schema_is_refused(exported, tmp_path):
    import onnx

    _, path = exported
    proto = onnx.load(str(path))
    for entry in proto.metadata_props:
        if entry.key == "rlimpact.feature_schema_version":
            entry.value = "999"
    onnx.save(proto, str(tmp_path / "old.onnx"))
    with pytest.raises(ModelSchemaError, match="v999"):
        ImpactModel(tmp_path / "old.onnx")
