"""Reading label files and deciding what each row names (services/ingestor/collector/labels.py).

Storing and matching against Postgres is in tests/integration/test_collect_labels.py.
"""

from __future__ import annotations

import json

import pytest

from services.ingestor.collector.labels import (
    RANK_TIER_MMR,
    BcRank,
    LabelFileError,
    LabelRow,
    classify,
    parse_csv,
    parse_jsonl,
    pick_replay,
    rating_from_rank,
)
from shared.db import NameMatch

CSV = """replay_filename,player_name,team,skill_rating
a.replay,Ann,0,1200
folder/b.replay, Bob ,orange,950.5
c.replay,"Cy, the second",Blue,1100
c.replay,Di,green,1000
c.replay,Ed,1,lots
c.replay,Fay,1,nan

c.replay,,1,900
c.replay,Gus,1
"multi
line.replay",Hal,0,-5
"""


def _fields(row: LabelRow) -> tuple:
    return row.line, row.replay_refs, row.player_name, row.team, row.skill_rating


def test_csv_rows_and_invalid_rows_with_line_numbers():
    parsed = parse_csv(CSV.splitlines(keepends=True))
    assert [_fields(r) for r in parsed.rows] == [
        (2, ("a.replay",), "Ann", 0, 1200.0),
        (3, ("b.replay",), "Bob", 1, 950.5),  # folders dropped, spaces trimmed
        (4, ("c.replay",), "Cy, the second", 0, 1100.0),
    ]
    assert [(bad.line, bad.reason) for bad in parsed.invalid] == [
        (5, "team 'green' is not 0, 1, blue or orange"),
        (6, "skill_rating 'lots' is not a number"),
        (7, "skill_rating 'nan' is outside [0, 100000)"),
        (9, "player_name is empty"),
        (10, "3 columns, expected 4"),
        (12, "skill_rating '-5' is outside [0, 100000)"),  # a quoted newline: line 11-12
    ]


def test_csv_with_the_wrong_header_is_refused_as_a_whole():
    with pytest.raises(LabelFileError, match="header must be replay_filename,player_name"):
        parse_csv(["file,name,team,mmr\n", "a.replay,Ann,0,1\n"])


def _replay(bc_id: str, players: list[dict], **extra: object) -> str:
    return json.dumps(
        {"id": bc_id, "status": "ok", "blue": {"players": players}, "orange": {}, **extra}
    )


def test_jsonl_gives_a_label_per_rated_player_and_reports_bad_lines():
    lines = [
        _replay(
            "bc-1",
            [
                {"name": "Ann", "mmr": 1234, "rank": {"tier": 1, "division": 1}},
                {"name": "Bob", "rank": {"tier": 19, "division": 2, "name": "GC I Div 2"}},
                {"name": "Cy", "rank": {"tier": 0}},
                {"name": "Di"},
            ],
            rocket_league_id="ABCD",
        ),
        "",
        "{not json",
        json.dumps({"status": "ok"}),
        json.dumps({"id": "bc-2", "blue": {"players": [{"name": "X", "mmr": "high"}]}}),
    ]
    parsed = parse_jsonl(lines)
    assert [_fields(r) for r in parsed.rows] == [
        (1, ("bc-1", "ABCD"), "Ann", 0, 1234.0),
        (1, ("bc-1", "ABCD"), "Bob", 0, rating_from_rank(BcRank(tier=19, division=2))),
    ]
    assert parsed.unrated_players == 2
    assert [bad.line for bad in parsed.invalid] == [3, 4, 5]
    assert parsed.invalid[0].reason.startswith("not JSON")
    assert parsed.invalid[1].reason == "not a Ballchasing replay: id: Field required"
    assert "blue.players.0.mmr" in parsed.invalid[2].reason


def test_rank_mapping_is_monotonic_and_documented_values_hold():
    ranks = [BcRank(tier=t, division=d) for t in range(1, 23) for d in range(1, 5)]
    ratings = [rating_from_rank(r) for r in ranks]
    assert ratings == sorted(ratings) and len(set(ratings)) == len(ratings)
    assert rating_from_rank(BcRank(tier=19, division=1)) == 1435 + 0.5 * (1575 - 1435) / 4
    assert rating_from_rank(BcRank(tier=22)) == (1870 + 2070) / 2  # no divisions
    assert rating_from_rank(BcRank(tier=0)) is None  # unranked
    assert rating_from_rank(BcRank(tier=23)) is None
    assert rating_from_rank(None) is None
    assert len(RANK_TIER_MMR) == 23


def _row(*refs: str) -> LabelRow:
    return LabelRow(line=2, replay_refs=refs, player_name="Ann", team=0, skill_rating=1.0)


def test_the_first_reference_that_names_a_replay_decides():
    found = {"bc-1": ["h1"], "ABCD": ["h2"], "dup.replay": ["h3", "h4"]}
    assert pick_replay(_row("bc-1", "ABCD"), found) == ("h1", "")
    assert pick_replay(_row("bc-9", "ABCD"), found) == ("h2", "")
    assert pick_replay(_row("dup.replay"), found) == (
        None,
        "2 different replays are named 'dup.replay'",
    )
    assert pick_replay(_row("x.replay"), found) == (None, "no replay known as 'x.replay'")


@pytest.mark.parametrize(
    ("match", "outcome"),
    [
        (NameMatch("ann", "featurized", None, True, (2,)), "matched"),
        (NameMatch("ann", "uploaded", None, False, ()), "waiting"),
        (NameMatch("ann", "parsed", None, True, ()), "the replay has no blue player named 'Ann'"),
        (NameMatch("ann", "parsed", None, True, (1, 2)), "2 blue players are named 'Ann'"),
        (
            NameMatch("ann", "failed", "no cars", False, ()),
            "the replay failed to parse: no cars",
        ),
    ],
)
def test_classify(match: NameMatch, outcome: str):
    assert classify(_row("a.replay"), match) == outcome
