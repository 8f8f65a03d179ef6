"""What the impact model is for (shared/scope.py), and that training leaves the rest out."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.parser.parse import parse_replay_file
from services.trainer.config import TrainConfig
from services.trainer.data import scoped_tables
from services.trainer.train import train_impact_model
from shared.features.batch import featurize
from shared.scope import game_mode, in_scope, standard_arena

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.mark.parametrize(
    "arena", ["Stadium_P", "EuroStadium_Night_P", "cs_p", "UtopiaStadium_Snow_P", "Park_P", None]
)
def test_standard_arenas_and_unknown_ones_are_standard(arena):
    assert standard_arena(arena)


@pytest.mark.parametrize(
    "arena",
    ["HoopsStadium_P", "hoopsStreet_p", "ShatterShot_P", "labs_doublegoal_p",
     "Labs_CirclePillars_P", "throwbackstadium_P"],
)  # fmt: skip
def test_hoops_dropshot_and_rocket_labs_are_not(arena):
    assert not standard_arena(arena)


@pytest.mark.parametrize(
    ("objects", "mode"),
    [
        (["Archetypes.Ball.Ball_Default", "Archetypes.GameEvent.GameEvent_Soccar"], "soccar"),
        ([], "soccar"),
        (["Archetypes.Ball.Ball_Default", "Archetypes.GameEvent.GameEvent_Items"], "rumble"),
        (["Archetypes.Ball.Ball_Default", "Archetypes.Mutators.SubRules.ItemsMode_SpikesOnly"],
         "rumble"),
        (["Archetypes.Ball.Ball_Puck", "Archetypes.GameEvent.GameEvent_Hockey"], "snow_day"),
        (["Archetypes.Ball.Ball_BasketBall"], "hoops"),
        (["Archetypes.Ball.Ball_Breakout", "Archetypes.GameEvent.GameEvent_Breakout"], "dropshot"),
        (["Archetypes.Ball.Ball_God"], "heatseeker"),
        (["Archetypes.Ball.CubeBall", "Archetypes.GameEvent.GameEvent_Soccar"], "other_ball"),
    ],
)  # fmt: skip
def test_the_game_mode_comes_from_ball_event_and_mutator_archetypes(objects, mode):
    assert game_mode(objects) == mode


def test_the_scope_is_soccar_on_a_standard_arena():
    assert in_scope("Stadium_P", "soccar") and in_scope(None, None)
    assert not in_scope("Stadium_P", "rumble") and not in_scope("HoopsStadium_P", "soccar")


def test_training_leaves_other_modes_and_arenas_out(good_replays):
    rows = [r for r in good_replays if (r.goals or 0) >= 2 and r.team_size == 2][:8]
    parsed = [parse_replay_file(r.path, r.sha256) for r in rows]
    tables = [featurize(p) for p in parsed if in_scope(p.map_name, p.game_mode)][:3]
    assert len(tables) == 3
    hoops = replace(tables[0], replay_id="hoops", map_name="HoopsStadium_P")
    rumble = replace(tables[1], replay_id="rumble", game_mode="rumble")
    everything = [*tables, hoops, rumble]
    scoped, other = scoped_tables(everything)
    assert [t.replay_id for t in scoped] == [t.replay_id for t in tables]
    assert [t.replay_id for t in other] == ["hoops", "rumble"]
    config = TrainConfig(batch_size=4096).with_fit(epochs=1, milestone_every=0)
    result = train_impact_model(everything, config, progress=False)
    assert result.out_of_scope == ["hoops", "rumble"]
    assert sorted(result.train_replays + result.val_replays) == sorted(t.replay_id for t in tables)
