"""The live service without its scoring, for ``bench/live.py --scoring none``.

Every frame still takes the whole path: the bridge, Kafka, the live service's poll, decoding,
the per-match state (rows, goals, offsets, snapshots), the ``scores.live`` update with its
encoding and send, the page's hub. Only the featurizing and the model call are left out (the
update carries the totals as they stand, P(score) 0). What this variant's latency is, the
rest of the path costs on the machine: the floor under any faster scoring.
"""

from __future__ import annotations

from services.live import service
from services.live.scorer import LiveScorer
from services.live.state import MatchState, ScoringModel
from shared.events import LiveFrame


def unscored(
    self: LiveScorer, states: list[MatchState], model: ScoringModel
) -> list[tuple[MatchState, list[LiveFrame]]]:
    """What ``LiveScorer._score`` returns, without featurizing or scoring the rows."""
    done = []
    for state in states:
        done.append((state, state.pending))
        state.pending, state.rows, state.new_goals = [], [], []
    return done


if __name__ == "__main__":
    LiveScorer._score = unscored  # type: ignore[method-assign]
    service.main()
