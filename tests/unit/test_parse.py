"""The native frame extractor on the whole corpus (parsed once per module: ~5 s on one core)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import rlimpact_native

from services.parser.parse import (
    EXTRACTION_RULES,
    ReplayParseError,
    parse_replay_bytes,
    parse_replay_file,
)
from services.parser.validate import violations
from shared.frames import (
    BALL_FIELD,
    FRAMES_COMPRESSION,
    FRAMES_FORMAT_VERSION,
    FRAMES_SUFFIX,
    PLAYER_FIELD,
    ParsedReplay,
    save_npz,
)
from shared.scope import in_scope
from shared.settings import ValidationRules, get_settings

FPS = 10.0
# Truncated/corrupt files in the corpus: boxcars itself cannot read their header.
_CORRUPT_MARKERS = ("crc check failed", "Could not decode replay header")
# Just before a goal the ball is deep in the scored-on half (goal line at |y| = 5120 in soccar).
GOAL_LINE_Y = 4000.0
TOUCH_REACH = 400.0


@dataclass(frozen=True)
class Outcome:
    row: object
    parsed: ParsedReplay | None
    error: ReplayParseError | None


@cache
def _subtr_actor_messages() -> dict[str, str]:
    """File name -> subtr-actor's outcome on it, as recorded in the corpus manifest."""
    with (get_settings().replays_dir / "MANIFEST.tsv").open() as handle:
        rows = csv.DictReader(handle, delimiter="\t")
        return {Path(r["file"]).name: r["subtr_actor_1.5.1_ndarray"] for r in rows}


def _subtr_actor_message(row) -> str:
    return _subtr_actor_messages()[row.path.name]


def _is_corrupt(row) -> bool:
    return any(marker in _subtr_actor_message(row) for marker in _CORRUPT_MARKERS)


@pytest.fixture(scope="module")
def sweep(manifest) -> list[Outcome]:
    outcomes = []
    for row in manifest:
        try:
            outcomes.append(Outcome(row, parse_replay_file(row.path, row.sha256, FPS), None))
        except ReplayParseError as error:
            outcomes.append(Outcome(row, None, error))
    return outcomes


@pytest.fixture(scope="module")
def corpus(sweep) -> list[Outcome]:
    return [o for o in sweep if o.row.path.parent.name == "corpus"]


@pytest.fixture(scope="module")
def parsed(sweep) -> list[ParsedReplay]:
    return [o.parsed for o in sweep if o.parsed is not None]


@pytest.fixture(scope="module")
def standard(sweep, standard_replay) -> ParsedReplay:
    return next(o.parsed for o in sweep if o.row == standard_replay)


def test_at_least_97_percent_of_decodable_corpus_replays_parse(corpus):
    decodable = [o for o in corpus if not _is_corrupt(o.row)]
    assert len(corpus) == 230 and len(decodable) == 219
    ok = [o for o in decodable if o.parsed is not None]
    assert len(ok) >= 213, f"{len(ok)} of {len(decodable)} decodable replays parse"
    assert [o.row.path.name for o in ok if violations(o.parsed, ValidationRules())] == []
    # The rest are rejected by a named rule that applies, never a decode failure or a crash.
    for outcome in decodable:
        if outcome.error is not None:
            assert outcome.error.rule in EXTRACTION_RULES.values(), outcome.error.reason


def test_every_replay_subtr_actor_parses_parses_too(corpus):
    missed = [o.row.path.name for o in corpus if o.row.subtr_actor_ok and o.parsed is None]
    assert missed == []


def test_corrupt_corpus_files_are_rejected_naming_the_decode_failure(corpus):
    corrupt = [o for o in corpus if _is_corrupt(o.row)]
    assert len(corrupt) == 11
    for outcome in corrupt:
        assert outcome.error is not None
        reason = outcome.error.reason
        assert reason.startswith("undecodable replay: ")
        assert "CRC mismatch" in reason or "Could not decode replay header" in reason


def test_every_bad_replay_is_rejected_with_a_reason(sweep):
    bad = [o for o in sweep if o.row.path.parent.name == "bad"]
    assert len(bad) == 7
    for outcome in bad:
        assert outcome.error is not None
        assert outcome.error.reason.startswith("undecodable replay: ")
        assert len(outcome.error.reason) > len("undecodable replay: ") + 10


def test_garbage_bytes_are_a_clean_error():
    for data in (b"", b"\x00" * 10, bytes(range(256)) * 40):
        with pytest.raises(ReplayParseError, match=r"^undecodable replay: "):
            parse_replay_bytes(data, "x")


def test_standard_replay_has_both_teams_and_all_frames(standard: ParsedReplay):
    assert standard.team_size == 3
    assert [p.team for p in standard.players].count(0) >= 3
    assert [p.team for p in standard.players].count(1) >= 3
    assert [p.team for p in standard.players] == sorted(p.team for p in standard.players)
    assert standard.cars.shape == (standard.n_frames, len(standard.players), len(PLAYER_FIELD))
    assert np.all(np.diff(standard.time) > 0), "samples are in time order"
    assert np.allclose(np.diff(standard.time), 1 / FPS, atol=1e-3)


def test_sampling_rate_follows_fps(standard_replay, standard: ParsedReplay):
    fast = parse_replay_file(standard_replay.path, standard_replay.sha256, fps=30.0)
    assert fast.n_frames == pytest.approx(3 * standard.n_frames, abs=3)
    np.testing.assert_array_equal(fast.cars[::3][: standard.n_frames], standard.cars)


def test_boost_is_a_fraction_and_flags_are_binary(parsed):
    for replay in parsed:
        boost = replay.cars[:, :, PLAYER_FIELD["boost"]]
        assert boost.min() >= 0.0 and boost.max() <= 1.0
        for flag in ("jumping", "demolished"):
            assert set(np.unique(replay.cars[:, :, PLAYER_FIELD[flag]])) <= {0.0, 1.0}
        assert np.isfinite(replay.cars).all() and np.isfinite(replay.ball).all()


def test_absent_players_are_zeros_flagged_demolished(parsed):
    for replay in parsed:
        absent = replay.cars[:, :, PLAYER_FIELD["demolished"]] == 1
        assert not replay.cars[absent][:, : PLAYER_FIELD["demolished"]].any()


def test_reconnecting_players_keep_one_index(parsed):
    for replay in parsed:
        identities = [(p.platform_id, p.name) for p in replay.players if p.platform_id]
        assert len(identities) == len(set(identities)), replay.replay_id


def test_players_joining_and_leaving_keep_their_columns(corpus):
    changing = [o for o in corpus if "player columns changed" in _subtr_actor_message(o.row)]
    assert len(changing) == 32 and all(o.parsed is not None for o in changing)
    late_or_leaving = 0
    for outcome in changing:
        replay = outcome.parsed
        present = replay.cars[:, :, PLAYER_FIELD["demolished"]] == 0
        teams = np.array([p.team for p in replay.players])
        # never more cars on a team than its size (but for a handover frame or two)
        for team in (0, 1):
            crowded = present[:, teams == team].sum(axis=1) > replay.team_size
            assert crowded.mean() < 0.01, (outcome.row.path.name, team)
        late_or_leaving += int((~present[0] | ~present[-1]).sum())
    assert late_or_leaving > 100


def test_goals_have_times_for_every_header_goal(corpus):
    checked = 0
    for outcome in corpus:
        replay = outcome.parsed
        if replay is None or outcome.row.goals is None:
            continue
        assert len(replay.goals) == outcome.row.goals, outcome.row.path.name
        times = [g.time for g in replay.goals]
        assert times == sorted(times)
        if times:
            assert replay.time[0] <= times[0] and times[-1] <= replay.time[-1] + 1 / FPS
        checked += len(times)
    assert checked >= 800


def test_goal_times_put_the_ball_in_a_goal(parsed):
    at_goal_line = []
    for replay in parsed:
        for goal in replay.goals:
            # the last sample before the goal: at the goal some versions respawn the ball
            frame = max(int(np.searchsorted(replay.time, goal.time, side="right")) - 1, 0)
            y = replay.ball[frame, BALL_FIELD["y"]]
            at_goal_line.append(abs(y) > GOAL_LINE_Y and (y > 0) == (goal.team == 0))
    # hoops, dropshot and replays that stop at the goal account for the rest
    assert np.mean(at_goal_line) > 0.9


def test_touches_are_sorted_frame_player_pairs(parsed):
    with_touches = 0
    for replay in parsed:
        touches = replay.touches
        assert touches.dtype == np.int32 and touches.ndim == 2 and touches.shape[1] == 2
        assert np.all(np.diff(touches[:, 0]) >= 0)
        if len(touches):
            assert touches[:, 0].min() >= 0 and touches[:, 0].max() < replay.n_frames
            assert touches[:, 1].min() >= 0 and touches[:, 1].max() < len(replay.players)
            with_touches += 1
    assert with_touches >= 200


def test_touching_cars_are_next_to_the_ball(parsed):
    distances = []
    for replay in parsed:
        frames, players = replay.touches[:, 0], replay.touches[:, 1]
        nearest = np.full(len(frames), np.inf)
        # the touch happened between samples: the closest of the neighbouring samples
        for shift in (-1, 0, 1):
            at = np.clip(frames + shift, 0, replay.n_frames - 1)
            car = replay.cars[at, players]
            d = np.linalg.norm(car[:, :3] - replay.ball[at, :3], axis=1)
            d[car[:, PLAYER_FIELD["demolished"]] == 1] = np.inf
            nearest = np.minimum(nearest, d)
        distances.extend(nearest)
    distances = np.array(distances)
    assert len(distances) > 10_000
    assert np.median(distances) < 250
    assert np.mean(distances < TOUCH_REACH) > 0.99


def test_most_goals_follow_a_touch_by_the_scoring_team(parsed):
    goals = followed = 0
    for replay in parsed:
        teams = np.array([p.team for p in replay.players])
        touch_times = replay.time[replay.touches[:, 0]]
        for goal in replay.goals:
            window = (touch_times > goal.time - 5.0) & (touch_times <= goal.time + 0.1)
            goals += 1
            followed += bool((teams[replay.touches[window, 1]] == goal.team).any())
    assert goals >= 800 and followed / goals > 0.85  # own goals are the rest


def _assert_same_replay(loaded: ParsedReplay, original: ParsedReplay) -> None:
    assert loaded.players == original.players and loaded.goals == original.goals
    assert (loaded.replay_id, loaded.fps, loaded.team_size) == (
        original.replay_id,
        original.fps,
        original.team_size,
    )
    for name in ("time", "seconds_remaining", "ball", "cars", "touches"):
        mine, theirs = getattr(loaded, name), getattr(original, name)
        assert mine.dtype == theirs.dtype and mine.shape == theirs.shape, name
        assert mine.tobytes() == theirs.tobytes(), name
    assert loaded.touches.dtype == np.int32 and len(loaded.touches) > 10
    assert (loaded.map_name, loaded.game_mode) == (original.map_name, original.game_mode)
    assert original.map_name and original.game_mode


@pytest.mark.parametrize("compression", [FRAMES_COMPRESSION, None, "zstd"])
def test_frames_file_round_trips(standard: ParsedReplay, tmp_path: Path, compression):
    path = tmp_path / f"frames{FRAMES_SUFFIX}"
    standard.save(path, compression)
    _assert_same_replay(ParsedReplay.load(path), standard)


def test_frames_file_is_an_arrow_table_with_a_row_per_frame(standard: ParsedReplay, tmp_path):
    path = tmp_path / f"frames{FRAMES_SUFFIX}"
    standard.save(path)
    table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    assert table.column_names == ["time", "seconds_remaining", "ball", "cars"]
    assert table.num_rows == standard.n_frames
    assert table.schema.field("cars").type == pa.list_(
        pa.float32(), len(standard.players) * len(PLAYER_FIELD)
    )
    header = json.loads(table.schema.metadata[b"rlimpact.frames"])
    assert header["format_version"] == FRAMES_FORMAT_VERSION == 3
    assert header["touches"] == standard.touches.tolist()


def test_frames_files_of_format_2_are_still_read(standard: ParsedReplay, tmp_path: Path):
    save_npz(standard, tmp_path / "frames.npz")
    _assert_same_replay(ParsedReplay.load(tmp_path / "frames.npz"), standard)


def test_a_file_that_is_no_frames_file_is_a_value_error(tmp_path: Path):
    (tmp_path / "junk").write_bytes(b"not a frames file" * 10)
    with pytest.raises(ValueError, match="not a frames file"):
        ParsedReplay.load(tmp_path / "junk")
    other = tmp_path / "other.arrow"
    with pa.OSFile(str(other), "wb") as sink, pa.ipc.new_file(sink, pa.schema([])) as writer:
        writer.write_table(pa.table({}))
    with pytest.raises(ValueError, match="without a frames header"):
        ParsedReplay.load(other)


def test_decode_only_decodes_what_extract_decodes(standard_replay, standard: ParsedReplay):
    data = standard_replay.path.read_bytes()
    assert rlimpact_native.decode_only(data) == rlimpact_native.extract(data, FPS)["network_frames"]
    for damaged in (data[: len(data) // 2], b"\x00" * 10):
        with pytest.raises(rlimpact_native.DecodeError):
            rlimpact_native.decode_only(damaged)


def test_arena_and_game_mode_come_from_the_replay(corpus):
    parsed = {o.row.path.name: o.parsed for o in corpus if o.parsed is not None}
    scope = {name: (p.map_name, p.game_mode) for name, p in parsed.items()}
    assert scope["boxcars-00bb.replay"] == ("TrainStation_Dawn_P", "soccar")  # ranked 3v3
    assert scope["rattletrap-1ef9.replay"] == ("HoopsStadium_P", "hoops")
    assert scope["boxcars-2266.replay"] == ("ShatterShot_P", "dropshot")
    assert scope["boxcars-spike_rush.replay"][1] == "rumble"
    assert scope["boxcars-heatseeker.replay"][1] == "heatseeker"
    assert all(arena for arena, _ in scope.values()), "every parsed corpus replay names its arena"
    soccar = [name for name, (arena, mode) in scope.items() if in_scope(arena, mode)]
    assert 0.6 < len(soccar) / len(scope) < 0.85, len(soccar)


def _forward(roll_pitch_yaw: np.ndarray, convention: str) -> np.ndarray:
    a, b, c = roll_pitch_yaw.T
    if convention == "zyx":  # ours: R = Rz(yaw) Ry(pitch) Rx(roll)
        return np.stack([np.cos(c) * np.cos(b), np.sin(c) * np.cos(b), -np.sin(b)], axis=1)
    # subtr-actor: glam's intrinsic XYZ, R = Rx(a) Ry(b) Rz(c)
    return np.stack(
        [
            np.cos(b) * np.cos(c),
            np.cos(a) * np.sin(c) + np.sin(a) * np.sin(b) * np.cos(c),
            np.sin(a) * np.sin(c) - np.cos(a) * np.sin(b) * np.cos(c),
        ],
        axis=1,
    )


def test_positions_agree_with_subtr_actor(good_replays, sweep):
    """Where both parse, cars sit where subtr-actor's ndarray collector puts them.

    Compared only where both hold live, moving state: subtr-actor freezes a car (velocity 0)
    after respawns and our forward fill holds the state through gaps in the recording.
    """
    subtr_actor = pytest.importorskip("subtr_actor")
    by_row = {o.row: o.parsed for o in sweep}
    medians, p95s, ball_medians, cosines = [], [], [], []
    for row in good_replays[::25]:
        info, array = subtr_actor.get_ndarray_with_info_from_replay_filepath(
            str(row.path),
            global_feature_adders=["BallRigidBody", "CurrentTime"],
            player_feature_adders=["PlayerRigidBody", "PlayerDemolishedBy"],
            fps=FPS,
            dtype="float32",
        )
        ours = by_row[row]
        index = np.clip(np.searchsorted(ours.time, array[:, 12] - 1e-3), 0, ours.n_frames - 1)
        aligned = np.abs(ours.time[index] - array[:, 12]) < 0.02
        ball = np.linalg.norm(array[aligned, :3] - ours.ball[index[aligned], :3], axis=1)
        ball_medians.append(np.median(ball))
        meta = info["replay_meta"]
        names = [p["name"] for team in ("team_zero", "team_one") for p in meta[team] or []]
        ours_by_name = {p.name: p.index for p in ours.players}
        for j, name in enumerate(names):
            if name not in ours_by_name:  # subtr-actor names a nameless player by a number
                continue
            theirs = array[:, 13 + 13 * j : 13 + 13 * (j + 1)]
            mine = ours.cars[index, ours_by_name[name]]
            moving = np.r_[False, np.any(mine[1:, :3] != mine[:-1, :3], axis=1)]
            both = (
                aligned
                & moving
                & (mine[:, PLAYER_FIELD["demolished"]] == 0)
                & (theirs[:, 12] < 0)
                & (np.abs(theirs[:, 6:9]).sum(axis=1) > 0)
            )
            if both.sum() < 50:
                continue
            d = np.linalg.norm(theirs[both, :3] - mine[both, :3], axis=1)
            medians.append(np.median(d))
            p95s.append(np.percentile(d, 95))
            f_theirs = _forward(theirs[both, 3:6], "xyz")
            f_mine = _forward(mine[both, 3:6], "zyx")
            cosines.append(np.median(np.sum(f_theirs * f_mine, axis=1)))
    assert len(medians) >= 20
    assert max(medians) < 100 and np.median(medians) < 1.0
    assert max(p95s) < 400
    assert max(ball_medians) < 100  # they interpolate the ball, we forward-fill
    assert min(cosines) > 0.99  # same orientation, in a different Euler convention
