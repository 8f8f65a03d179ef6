"""Live scoring from bridge frames: the per-match stream, velocity estimates, incremental
features equal to the batch ones, and live impact equal to the replay scorer's on a real
replay."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import numpy as np
import pytest

from services.live import snapshot
from services.live.scorer import LiveScorer
from services.live.state import MatchState, ScoringModel
from services.parser.parse import parse_replay_file
from shared.events import LiveBall, LiveFrame, LivePlayer, utcnow
from shared.features.batch import featurize
from shared.features.stream import KEEP_SECONDS, StreamFeaturizer, stream_rows
from shared.features.table import FEATURE_SCHEMA_VERSION, N_FEATURES
from shared.frames import PLAYER_FIELD, ParsedReplay
from shared.impact import score_table
from shared.model import INPUT_NAME, META_SCHEMA, META_VERSION, OUTPUT_NAME, ImpactModel

FPS = 30


@pytest.fixture(scope="module")
def parsed(standard_replay) -> ParsedReplay:
    return parse_replay_file(standard_replay.path, standard_replay.sha256, fps=FPS)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> ScoringModel:
    """A small logistic model of the current feature schema, run by the real onnxruntime
    (so these tests do not depend on the shipped model being retrained yet)."""
    path = tmp_path_factory.mktemp("model") / "impact.onnx"
    write_logistic_onnx(path, np.random.default_rng(0).normal(0, 0.3, (N_FEATURES, 2)))
    impact = ImpactModel(path)
    return ScoringModel(impact, None, impact.version)


def write_logistic_onnx(path, weights: np.ndarray) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [INPUT_NAME, "w"], ["logits"]),
            helper.make_node("Add", ["logits", "b"], ["shifted"]),
            helper.make_node("Sigmoid", ["shifted"], [OUTPUT_NAME]),
        ],
        "logistic",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["n", N_FEATURES])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["n", 2])],
        [
            numpy_helper.from_array(weights.astype(np.float32), "w"),
            numpy_helper.from_array(np.array([-3.0, -3.0], dtype=np.float32), "b"),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    for key, value in ((META_SCHEMA, str(FEATURE_SCHEMA_VERSION)), (META_VERSION, "test-logistic")):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, path)


def plugin_frames(
    parsed: ParsedReplay, match_id: str, start: int, stop: int, *, velocities: bool = True
) -> list[LiveFrame]:
    """The replay's frames as a custom plugin would send them (exact state, velocities)."""
    f, t0 = PLAYER_FIELD, utcnow()
    touches = np.asarray(parsed.touches).reshape(-1, 2)
    frames = []
    goals = parsed.goals
    for i in range(start, stop):
        t, ball = float(parsed.time[i]), parsed.ball[i]
        players = []
        for info in parsed.players:
            car = parsed.cars[i, info.index]
            players.append(
                LivePlayer(
                    id=f"id-{info.index}",
                    name=info.name,
                    team=info.team,
                    **{k: float(car[f[k]]) for k in ("x", "y", "z", "roll", "pitch", "yaw")},
                    **({k: float(car[f[k]]) for k in ("vx", "vy", "vz")} if velocities else {}),
                    boost=float(car[f["boost"]]),
                    jumping=bool(car[f["jumping"]]),
                    demolished=bool(car[f["demolished"]]),
                    touches=int(np.count_nonzero(touches[touches[:, 0] <= i, 1] == info.index)),
                )
            )
        blue, orange = (sum(g.team == k and g.time <= t for g in goals) for k in (0, 1))
        frames.append(
            LiveFrame(
                match_id=match_id,
                source="plugin",
                seq=i - start,
                received_at=t0 + timedelta(seconds=(i - start) / FPS),
                game_time=float(parsed.time[i]),
                seconds_remaining=float(parsed.seconds_remaining[i]),
                blue_goals=blue,
                orange_goals=orange,
                ball=LiveBall(
                    **dict(zip(("x", "y", "z"), map(float, ball[0:3]), strict=True)),
                    **(
                        dict(zip(("vx", "vy", "vz"), map(float, ball[3:6]), strict=True))
                        if velocities
                        else {}
                    ),
                ),
                players=players,
            )
        )
    return frames


def test_live_impact_is_the_replay_scorers_on_the_same_frames(parsed, model):
    """Fed a replay's exact state frame by frame, in small batches as under load, the live path
    credits the same touches with the same values as the replay scorer on the same frames (up
    to two seconds after the second goal: every touch before it is settled in both)."""
    goal = parsed.goals[1]
    stop = int(np.searchsorted(parsed.time, goal.time)) + 2 * FPS
    scorer = LiveScorer()
    frames = plugin_frames(parsed, "m", 0, stop)
    updates = []
    for i in range(0, len(frames), 7):
        batch_updates, skipped = scorer.score(frames[i : i + 7], model, now=0.0)
        assert not skipped
        updates += batch_updates
    assert sum(len(u.frames_received_at) for u in updates) == stop

    expected = {
        s.name: s for s in score_table(featurize(parsed, 10.0).frames(0, stop), model.model)
    }
    live = {p.name: p for p in updates[-1].players}
    totals = {p.name: scorer.matches["m"].totals[p.id] for p in updates[-1].players}
    assert sum(s.touches for s in expected.values()) > 20, "a real stretch of play"
    assert sum(abs(s.impact) for s in expected.values()) > 1.0
    assert sum(abs(s.pace) for s in expected.values()) > 1.0
    for name, reference in expected.items():
        assert live[name].n_frames == stop
        assert totals[name].touches == reference.touches, name
        assert live[name].offence == pytest.approx(reference.offence, abs=1e-3), name
        assert live[name].defence == pytest.approx(reference.defence, abs=1e-3), name
        assert live[name].pace == pytest.approx(reference.pace, abs=1e-3), name
        assert live[name].impact == pytest.approx(reference.impact, abs=1e-3), name


def test_stream_features_equal_batch_features(parsed):
    """Two matches fed in batches of different sizes and featurized together, one call per
    poll, give exactly the rows of featurize() on the whole replay, though each keeps only the
    last seconds of frames."""
    reference = featurize(parsed, 10.0).features
    touches = np.asarray(parsed.touches, dtype=np.int64).reshape(-1, 2)
    streams = [StreamFeaturizer(f"m{k}", parsed.players, parsed.team_size) for k in (0, 1)]
    sizes, rows = (7, 3), [np.full_like(reference, np.nan) for _ in streams]
    done = [0, 0]
    while min(done) < parsed.n_frames:
        active = []
        for k, stream in enumerate(streams):
            a, b = done[k], min(done[k] + sizes[k], parsed.n_frames)
            if a == b:
                continue
            before = parsed.time[a - 1] if a else -np.inf
            goals = [g for g in parsed.goals if before < g.time <= parsed.time[b - 1]]
            chunk = touches[(touches[:, 0] >= a) & (touches[:, 0] < b)] - np.array([a, 0])
            stream.push(
                parsed.time[a:b],
                parsed.seconds_remaining[a:b],
                parsed.ball[a:b],
                parsed.cars[a:b],
                chunk,
                goals,
            )
            done[k] = b
            active.append(k)
        starts = [streams[k].first + streams[k].dirty_from for k in active]
        for k, start, new in zip(
            active, starts, stream_rows([streams[k] for k in active]), strict=True
        ):
            rows[k][start : start + new.shape[0]] = new
            streams[k].drop(streams[k].n_frames)
    for k, stream in enumerate(streams):
        assert stream.n_frames < 15 * FPS, "only the recent frames are kept"
        assert not np.isnan(rows[k]).any()
        np.testing.assert_array_equal(rows[k], reference)  # bit for bit


def test_goals_and_touches_reach_the_stream_from_the_feed(parsed):
    goal = next(g for g in parsed.goals if g.time > parsed.time[0] + 20)
    at = int(np.searchsorted(parsed.time, goal.time))
    state = MatchState("m")
    for frame in plugin_frames(parsed, "m", at - 500, at + 10):
        state.add(frame)
    stream = state.push()
    window = stream.parsed()
    assert [(g.team, g.time) for g in window.goals] == [
        (goal.team, pytest.approx(float(parsed.time[at]), abs=1 / FPS))
    ]
    first = at - 500
    truth = [(int(f) - first, int(p)) for f, p in parsed.touches if first < f < at + 10]
    columns = {int(p.id.removeprefix("id-")): c for c, p in enumerate(state.players)}
    assert truth, "the replay has touches in these seconds"
    assert window.touches.tolist() == [[f, columns[p]] for f, p in truth]
    stream_rows([stream])
    stream.drop(stream.n_frames)  # the frames older than KEEP_SECONDS go
    kept = stream.time[-1] - stream.time[0]
    assert kept == pytest.approx(KEEP_SECONDS, abs=2 / FPS) and stream.first > 0


def test_velocities_are_estimated_from_positions_when_not_sent(parsed):
    frames = plugin_frames(parsed, "m", 1000, 1010, velocities=False)
    state = MatchState("m")
    for frame in frames:
        state.add(frame)
    rows = state.rows
    dt = float(parsed.time[1009] - parsed.time[1008])
    expected_ball = (parsed.ball[1009, 0:3] - parsed.ball[1008, 0:3]) / dt
    np.testing.assert_allclose(rows[-1].ball[3:6], expected_ball, rtol=1e-3, atol=1.0)
    assert np.all(rows[0].ball[3:6] == 0), "no earlier frame: no estimate"
    moving = [p.index for p in parsed.players if not parsed.cars[1009, p.index, 11]]
    order = {f"id-{p.index}": i for i, p in enumerate(parsed.players)}
    column = {p.id: c for c, p in enumerate(state.players)}
    for index in moving:
        estimate = rows[-1].cars[column[f"id-{index}"], 6:9]
        truth = (parsed.cars[1009, index, 0:3] - parsed.cars[1008, index, 0:3]) / dt
        assert order[f"id-{index}"] == index
        capped = truth * min(1.0, 2300.0 / max(float(np.linalg.norm(truth)), 1e-9))
        np.testing.assert_allclose(estimate, capped, rtol=1e-3, atol=1.0)


def test_reported_speed_scales_the_estimate_and_teleports_are_capped():
    t0 = utcnow()

    def frame(seq: int, x: float, speed: float | None) -> LiveFrame:
        return LiveFrame(
            match_id="m",
            source="sos",
            seq=seq,
            received_at=t0 + timedelta(seconds=seq / 30),
            ball=LiveBall(x=x, y=0, z=93, speed=speed),
            players=[LivePlayer(id="a", name="A", team=0, x=x, y=0, z=17, speed=speed)],
        )

    state = MatchState("m")
    state.add(frame(0, 0.0, None))
    state.add(frame(1, 10.0, 600.0))  # moved 10 uu in 1/30 s (300 uu/s) but reports 600
    assert state.rows[-1].ball[3] == pytest.approx(600.0)
    assert state.rows[-1].cars[0, 6] == pytest.approx(600.0)
    state.add(frame(2, 3000.0, None))  # a respawn: 87,000 uu/s by differences
    assert state.rows[-1].cars[0, 6] == pytest.approx(2300.0)
    assert state.rows[-1].ball[3] == pytest.approx(6000.0)
    state.add(frame(3, 3000.0, 600.0))  # the feed repeats a position while the ball rolls
    assert state.rows[-1].ball[3] == pytest.approx(600.0), "the previous direction is kept"
    state.add(frame(4, 3000.0, None))  # no speed reported: no motion seen
    assert state.rows[-1].ball[3] == 0.0


def test_frames_without_locations_are_skipped_and_ended_matches_closed(parsed, model):
    scorer = LiveScorer()
    frames = plugin_frames(parsed, "m", 500, 510)
    blind = frames[0].model_copy(update={"ball": None, "seq": 99})
    updates, skipped = scorer.score([*frames, blind], model, now=0.0)
    assert skipped == {"no_locations": 1} and len(updates) == 1
    assert scorer.forget_idle(now=1.0, idle_seconds=60) == 1
    end = LiveFrame(match_id="m", source="plugin", seq=100, received_at=utcnow(), status="ended")
    updates, _ = scorer.score([end], model, now=2.0)
    assert [u.status for u in updates] == ["ended"] and updates[0].frames_received_at == []
    assert updates[0].players[0].n_frames == 10
    assert scorer.matches == {}


def test_a_player_leaving_starts_a_new_window_but_keeps_totals(parsed, model):
    scorer = LiveScorer()
    frames = plugin_frames(parsed, "m", 700, 720)
    scorer.score(frames[:10], model, now=0.0)
    leaver = frames[10].players[0].id
    reduced = [
        f.model_copy(update={"players": [p for p in f.players if p.id != leaver]})
        for f in frames[10:]
    ]
    updates, _ = scorer.score(reduced, model, now=0.0)
    state = scorer.matches["m"]
    assert leaver not in {p.id for p in state.players}
    assert {p.id: p.n_frames for p in updates[-1].players} == {p.id: 20 for p in state.players}
    assert scorer.matches["m"].totals[leaver].n == 10


def test_two_cars_touching_the_ball_in_one_frame_are_each_credited_once(parsed, model):
    """While play goes on after a frame in which two cars touched the ball, neither touch's
    outcome is known: both wait for the next touch, then each is credited once, as the replay
    scorer does (fed frame by frame, so many polls fall while they wait)."""
    touches = np.asarray(parsed.touches).reshape(-1, 2)
    stop = int(np.searchsorted(parsed.time, parsed.goals[0].time)) + 2 * FPS
    gaps = np.diff(touches[:, 0])
    k = int(np.flatnonzero((gaps > FPS) & (touches[1:, 0] < stop - 4 * FPS))[0])
    frame, player = touches[k]
    other = next(p.index for p in parsed.players if p.team != parsed.players[player].team)
    doubled = replace(parsed, touches=np.insert(touches, k + 1, [frame, other], axis=0))

    scorer = LiveScorer()
    for live_frame in plugin_frames(doubled, "m", 0, stop):
        scorer.score([live_frame], model, now=0.0)

    expected = {
        s.player_index: s.touches
        for s in score_table(featurize(doubled, 10.0).frames(0, stop), model.model)
    }
    totals = scorer.matches["m"].totals
    assert {p.index: totals[f"id-{p.index}"].touches for p in parsed.players} == expected


def _scored(scorer: LiveScorer, frames: list[LiveFrame], model, offsets: range, batch: int):
    updates = []
    for i in range(0, len(frames), batch):
        positions = [(3, o) for o in offsets[i : i + batch]]
        updates += scorer.score(frames[i : i + batch], model, 0.0, positions)[0]
    return updates


def test_a_restored_snapshot_goes_on_exactly_as_the_match_it_was_taken_from(parsed, model):
    """A match snapshotted mid-play (touches waiting for their outcome, frames dropped from the
    window), restored in another scorer and fed the frames since its offset, ends with the
    totals of the undisturbed match, bit for bit; the frames it already reflects, read again
    after a restart, are skipped, not counted twice."""
    stop = int(np.searchsorted(parsed.time, parsed.goals[1].time)) + 2 * FPS
    frames = plugin_frames(parsed, "m", 0, stop)
    offsets = range(100, 100 + stop)
    undisturbed = LiveScorer()
    _scored(undisturbed, frames, model, offsets, 5)

    cut = int(np.searchsorted(parsed.time, parsed.goals[0].time)) + 3 * FPS + 7
    first = LiveScorer()
    _scored(first, frames[:cut], model, offsets[:cut], 5)
    before = first.matches["m"]
    assert before.stream is not None and before.stream.first > 0, "frames were dropped"
    raw = snapshot.encode(before)
    restored = snapshot.decode(raw)
    assert restored.offset == offsets[cut - 1] and restored.state is not None

    second = LiveScorer()
    second.matches["m"] = restored.state
    replay_from = cut - 40  # the committed offset lags the snapshot
    updates = _scored(second, frames[replay_from:], model, offsets[replay_from:], 5)
    assert sum(len(u.frames_received_at) for u in updates) == stop - cut

    want, got = undisturbed.matches["m"].totals, second.matches["m"].totals
    assert sum(t.touches for t in want.values()) > 20
    assert {k: (t.offence, t.defence, t.touches, t.n, t.pace) for k, t in got.items()} == {
        k: (t.offence, t.defence, t.touches, t.n, t.pace) for k, t in want.items()
    }


def test_a_closed_match_stays_closed_for_the_frames_it_had(parsed, model):
    scorer = LiveScorer()
    frames = plugin_frames(parsed, "m", 500, 510)
    end = LiveFrame(match_id="m", source="plugin", seq=10, received_at=utcnow(), status="ended")
    _scored(scorer, [*frames, end], model, range(0, 11), 11)
    assert scorer.matches == {} and [s.match_id for s in scorer.closed] == ["m"]
    closed = snapshot.decode(snapshot.encode_closed("m", 10))
    assert closed.state is None and closed.offset == 10

    again = LiveScorer()
    again.closed_at["m"] = closed.offset
    updates, skipped = again.score([*frames, end], model, 0.0, [(3, o) for o in range(11)])
    assert updates == [] and skipped == {"replayed": 11}


def test_snapshots_refuse_what_they_cannot_read():
    with pytest.raises(snapshot.SnapshotError):
        snapshot.decode(b"not a snapshot")


def test_the_live_benchs_unscored_variant_answers_batches_as_the_scorer_does(
    parsed, model, monkeypatch
):
    """``bench/live.py --scoring none`` measures the path's floor: its live service must send
    the same updates (one per match and batch, covering the same frames), unscored."""
    from bench.live_floor import unscored

    frames = plugin_frames(parsed, "a", 500, 530) + plugin_frames(parsed, "b", 700, 730)
    batches = [frames[i::30] for i in range(30)]  # a frame of each match per batch
    scorer = LiveScorer()
    expected = [scorer.score(batch, model, now=0.0)[0] for batch in batches]
    monkeypatch.setattr(LiveScorer, "_score", unscored)
    floor = LiveScorer()
    got = [floor.score(batch, model, now=0.0)[0] for batch in batches]
    assert [[(u.match_id, u.seq, u.frames_received_at) for u in b] for b in got] == [
        [(u.match_id, u.seq, u.frames_received_at) for u in b] for b in expected
    ]
    assert all(p.impact == 0.0 for b in got for u in b for p in u.players)
    assert all(not state.pending and not state.rows for state in floor.matches.values())
