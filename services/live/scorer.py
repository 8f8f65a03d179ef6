"""The live scorer: every match being followed, and each batch of ``live.frames`` turned into
``scores.live`` updates, one ONNX call for the new rows of all matches (see state.py)."""

from __future__ import annotations

import numpy as np

from services.live.state import MatchState, ScoringModel, Totals
from shared.events import (
    LiveFrame,
    LivePlayerScore,
    LiveScore,
)
from shared.features.stream import stream_rows
from shared.features.table import FEATURE_SCHEMA_VERSION, N_FEATURES


class LiveScorer:
    """All matches being followed; turns batches of live frames into ``scores.live`` updates."""

    def __init__(self) -> None:
        self.matches: dict[str, MatchState] = {}
        self.closed: list[MatchState] = []  # ended or forgotten since the caller last looked
        self.closed_at: dict[str, int] = {}  # closed match -> offset of its last frame

    def score(
        self,
        frames: list[LiveFrame],
        model: ScoringModel,
        now: float,
        positions: list[tuple[int, int]] | None = None,
    ) -> tuple[list[LiveScore], dict[str, int]]:
        """One update per match with new frames (and one for each match that ended), and the
        number of frames skipped by reason. ``positions``: each frame's (partition, offset)
        in live.frames; a frame at or before the offset its match's state reflects (read
        again after a restart or a rebalance) is skipped as ``replayed``."""
        skipped: dict[str, int] = {}
        ended: list[MatchState] = []
        for i, frame in enumerate(frames):
            partition, offset = positions[i] if positions is not None else (-1, -1)
            state = self.matches.get(frame.match_id)
            done = state.offset if state is not None else self.closed_at.get(frame.match_id, -1)
            if offset >= 0 and offset <= done:
                skipped["replayed"] = skipped.get("replayed", 0) + 1
                continue
            if state is None:
                state = MatchState(frame.match_id)
                self.matches[frame.match_id] = state
            state.last_seen, state.partition, state.offset = now, partition, offset
            if state.unsaved_from < 0:
                state.unsaved_from = offset
            if frame.status == "ended":
                ended.append(state)
                state.latest = frame
                continue
            if reason := state.add(frame):
                skipped[reason] = skipped.get(reason, 0) + 1
        active = [s for s in self.matches.values() if s.pending]
        updates = [self._update(state, f, model) for state, f in self._score(active, model)]
        for state in ended:
            if not state.pending:
                state.finish()
                updates.append(self._live_score(state, model, [], None))
            self._close(state)
        return updates, skipped

    def _close(self, state: MatchState) -> None:
        """Forget a match; its frames so far stay done (``closed_at``, ``closed``)."""
        self.matches.pop(state.match_id, None)
        self.closed.append(state)
        if state.offset >= 0:
            self.closed_at[state.match_id] = state.offset

    def drop_pending(self) -> None:
        """After a failure: forget the frames not scored yet (so they are not tried again) and
        start each such match's stream anew; the running totals stay."""
        for state in self.matches.values():
            if state.pending or (state.stream and state.stream.dirty_from < state.stream.n_frames):
                state.restart(state.players)
                if state.unsaved_from < 0:
                    state.unsaved_from = state.offset

    def forget_idle(self, now: float, idle_seconds: float) -> int:
        for state in [s for s in self.matches.values() if now - s.last_seen > idle_seconds]:
            self._close(state)
        return len(self.matches)

    def _score(
        self, states: list[MatchState], model: ScoringModel
    ) -> list[tuple[MatchState, list[LiveFrame]]]:
        """The out-of-date rows of every match, featurized and scored in one model call."""
        if not states:
            return []
        features = stream_rows([state.push() for state in states])
        flat = np.concatenate([f.reshape(-1, N_FEATURES) for f in features])
        probabilities = model.model.predict(np.ascontiguousarray(flat, dtype=np.float32))
        scored, offset = [], 0
        for state, f in zip(states, features, strict=True):
            n = f.shape[0] * f.shape[1]
            frames = state.pending
            state.scored(f, probabilities[offset : offset + n].reshape(f.shape[0], f.shape[1], 2))
            scored.append((state, frames))
            offset += n
        return scored

    def _update(self, state: MatchState, frames: list[LiveFrame], model: ScoringModel) -> LiveScore:
        return self._live_score(state, model, frames, state.latest_probabilities)

    def _live_score(
        self,
        state: MatchState,
        model: ScoringModel,
        frames: list[LiveFrame],
        latest: np.ndarray | None,
    ) -> LiveScore:
        last = state.latest
        assert last is not None
        by_id = {p.id: p for p in (last.players or state.players)}
        players = []
        for i, player in enumerate(state.players):
            totals = state.totals.get(player.id, Totals())
            players.append(
                LivePlayerScore(
                    id=player.id,
                    name=player.name,
                    team=player.team,
                    impact=totals.offence + totals.defence + totals.pace,
                    offence=totals.offence,
                    defence=totals.defence,
                    pace=totals.pace,
                    p_score=float(latest[i, 0]) if latest is not None else 0.0,
                    p_concede=float(latest[i, 1]) if latest is not None else 0.0,
                    n_frames=totals.n,
                    goals=by_id.get(player.id, player).goals,
                )
            )
        return LiveScore(
            match_id=state.match_id,
            seq=last.seq,
            frames_received_at=[f.received_at for f in frames],
            model_id=model.model_id,
            model_version=model.version,
            feature_schema_version=FEATURE_SCHEMA_VERSION,
            seconds_remaining=last.seconds_remaining,
            overtime=last.overtime,
            blue_goals=last.blue_goals,
            orange_goals=last.orange_goals,
            status=last.status,
            players=players,
        )
