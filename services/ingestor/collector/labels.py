"""Skill labels: reading label files, Ballchasing ranks as ratings, and matching to replays.

Two file formats (``rlimpact labels import``):

* CSV with the header ``replay_filename,player_name,team,skill_rating``; ``team`` is 0/1 or
  blue/orange, ``replay_filename`` is matched against ``replays.filename``.
* JSON lines, one Ballchasing replay (the body of ``GET /replays/<id>``) per line; the replay is
  found by its Ballchasing id (replays the collector downloaded), else by a replay file named
  ``<id>.replay`` or ``<rocket_league_id>.replay`` (the game names its replay files so).

A player is matched by team and name (trimmed, case-insensitive). A label whose replay is known
but not parsed yet is stored and waits: the view ``player_labels`` shows it once the parser has
listed the players. Rows that name no known replay, or a player the parsed replay does not have,
are reported and not stored; malformed rows are reported with their line number.

Everything here is pure except :func:`import_labels`, which runs the matching against Postgres.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Literal

import asyncpg
from pydantic import BaseModel, ConfigDict, ValidationError

from shared import db

CSV_COLUMNS = ("replay_filename", "player_name", "team", "skill_rating")
MAX_RATING = 100_000.0  # the table's CHECK; real MMR is below 3000
TEAMS: dict[str, Literal[0, 1]] = {"0": 0, "1": 1, "blue": 0, "orange": 1}

# Approximate MMR (2v2 playlist) where each Ballchasing rank tier starts, tier 1 (Bronze I) to
# tier 22 (Supersonic Legend), and where Supersonic Legend ends. A rank without an MMR becomes
# the middle of its division (four per tier; the middle of the tier when none is given). This
# is a coarse proxy: an MMR, when the API gives one, always wins.
RANK_TIER_MMR = (
    0, 170, 230, 290, 350, 410, 470, 530, 590, 650, 710,
    775, 835, 915, 995, 1075, 1195, 1315, 1435, 1575, 1715, 1870, 2070,
)  # fmt: skip
DIVISIONS = 4


# ---------------------------------------------------------------- Ballchasing replay shapes


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class BcRank(_Lenient):
    tier: int
    division: int | None = None
    name: str | None = None
    id: str | None = None


class BcPlayerId(_Lenient):
    platform: str = ""
    id: str = ""


class BcPlayer(_Lenient):
    name: str
    id: BcPlayerId | None = None
    rank: BcRank | None = None
    mmr: float | None = None


class BcTeam(_Lenient):
    players: list[BcPlayer] = []


class BcReplay(_Lenient):
    """``GET /replays/<id>``: the fields the labels need."""

    id: str
    status: str = "ok"
    rocket_league_id: str | None = None
    blue: BcTeam | None = None
    orange: BcTeam | None = None


def rating_from_rank(rank: BcRank | None) -> float | None:
    """The documented rank -> MMR mapping; None for unranked or an unknown tier."""
    if rank is None or not 1 <= rank.tier < len(RANK_TIER_MMR):
        return None
    start, end = RANK_TIER_MMR[rank.tier - 1], RANK_TIER_MMR[rank.tier]
    if rank.division is None or not 1 <= rank.division <= DIVISIONS:
        return (start + end) / 2
    return start + (rank.division - 0.5) * (end - start) / DIVISIONS


# ---------------------------------------------------------------- label rows


@dataclass(frozen=True)
class LabelRow:
    """One label read from a file, before it is matched."""

    line: int
    replay_refs: tuple[str, ...]  # file names (CSV) or Ballchasing ids (JSON lines), in order
    player_name: str
    team: Literal[0, 1]
    skill_rating: float
    rank: BcRank | None = None
    platform_id: str | None = None

    def shown(self) -> str:
        team = "blue" if self.team == 0 else "orange"
        return f"line {self.line}: {self.replay_refs[0]} {self.player_name!r} ({team})"


@dataclass(frozen=True)
class InvalidRow:
    line: int
    reason: str


@dataclass
class LabelFile:
    rows: list[LabelRow] = field(default_factory=list)
    invalid: list[InvalidRow] = field(default_factory=list)
    unrated_players: int = 0  # JSON lines: players with neither rank nor MMR


class LabelFileError(ValueError):
    """The file as a whole cannot be read (wrong header, not UTF-8)."""


def _rating(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"skill_rating {text!r} is not a number") from None
    if not math.isfinite(value) or not 0 <= value < MAX_RATING:
        raise ValueError(f"skill_rating {text!r} is outside [0, {MAX_RATING:g})")
    return value


def parse_csv(lines: Iterable[str]) -> LabelFile:
    """Rows of ``replay_filename,player_name,team,skill_rating``; line numbers count the header."""
    reader = csv.reader(lines)
    header = [column.strip().lower() for column in next(reader, [])]
    if tuple(header) != CSV_COLUMNS:
        raise LabelFileError(f"the header must be {','.join(CSV_COLUMNS)}, got {','.join(header)}")
    result = LabelFile()
    for values in reader:
        line = reader.line_num
        if not any(value.strip() for value in values):
            continue
        if len(values) != len(CSV_COLUMNS):
            result.invalid.append(
                InvalidRow(line, f"{len(values)} columns, expected {len(CSV_COLUMNS)}")
            )
            continue
        filename, name, team, rating = (value.strip() for value in values)
        try:
            result.rows.append(_csv_row(line, filename, name, team, rating))
        except ValueError as error:
            result.invalid.append(InvalidRow(line, str(error)))
    return result


def _csv_row(line: int, filename: str, name: str, team: str, rating: str) -> LabelRow:
    if not filename:
        raise ValueError("replay_filename is empty")
    if not name:
        raise ValueError("player_name is empty")
    if team.lower() not in TEAMS:
        raise ValueError(f"team {team!r} is not 0, 1, blue or orange")
    value = _rating(rating)
    # A path in the file name column names the same file: replays.filename has no folders.
    base = PurePath(filename.replace("\\", "/")).name
    return LabelRow(line, (base,), name, TEAMS[team.lower()], value)


def parse_jsonl(lines: Iterable[str]) -> LabelFile:
    """One Ballchasing replay per line; each player with an MMR or a rank gives a label."""
    result = LabelFile()
    for line, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            replay = BcReplay.model_validate(json.loads(text))
        except json.JSONDecodeError as error:
            result.invalid.append(InvalidRow(line, f"not JSON: {error.msg}"))
            continue
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            result.invalid.append(
                InvalidRow(line, f"not a Ballchasing replay: {where}: {first['msg']}")
            )
            continue
        rows, unrated = labels_from_ballchasing(replay, line)
        result.rows.extend(rows)
        result.unrated_players += unrated
    return result


def labels_from_ballchasing(replay: BcReplay, line: int = 0) -> tuple[list[LabelRow], int]:
    """Labels of the rated players of one replay, and how many players had no rating."""
    refs = tuple(ref for ref in (replay.id, replay.rocket_league_id) if ref)
    rows: list[LabelRow] = []
    unrated = 0
    sides: tuple[tuple[Literal[0, 1], BcTeam | None], ...] = ((0, replay.blue), (1, replay.orange))
    for team, side in sides:
        for player in side.players if side else []:
            rating = player.mmr if player.mmr is not None else rating_from_rank(player.rank)
            if rating is None or not player.name.strip():
                unrated += 1
                continue
            platform = player.id
            rows.append(
                LabelRow(
                    line=line,
                    replay_refs=refs,
                    player_name=player.name,
                    team=team,
                    skill_rating=float(rating),
                    rank=player.rank,
                    platform_id=f"{platform.platform}:{platform.id}"
                    if platform and platform.id
                    else None,
                )
            )
    return rows, unrated


# ---------------------------------------------------------------- matching


@dataclass(frozen=True)
class Unmatched:
    row: LabelRow
    reason: str


@dataclass
class ImportReport:
    source: str
    imported: int = 0
    updated: int = 0
    unchanged: int = 0
    waiting: list[LabelRow] = field(default_factory=list)  # stored; replay not parsed yet
    unmatched_replay: list[Unmatched] = field(default_factory=list)
    unmatched_player: list[Unmatched] = field(default_factory=list)
    invalid: list[InvalidRow] = field(default_factory=list)
    unrated_players: int = 0

    @property
    def stored(self) -> int:
        return self.imported + self.updated + self.unchanged

    def summary(self) -> str:
        text = (
            f"imported {self.imported}, updated {self.updated}, unchanged {self.unchanged}"
            f" ({len(self.waiting)} of these wait for their replay to be parsed);"
            f" unmatched replay {len(self.unmatched_replay)},"
            f" unmatched player {len(self.unmatched_player)}, invalid rows {len(self.invalid)}"
        )
        if self.unrated_players:
            text += f"; {self.unrated_players} players had no rank or MMR"
        return text

    def details(self) -> list[str]:
        lines = [f"unmatched replay: {u.row.shown()}: {u.reason}" for u in self.unmatched_replay]
        lines += [f"unmatched player: {u.row.shown()}: {u.reason}" for u in self.unmatched_player]
        lines += [f"invalid: line {bad.line}: {bad.reason}" for bad in self.invalid]
        return lines


def pick_replay(row: LabelRow, found: dict[str, list[str]]) -> tuple[str | None, str]:
    """The replay a row names, given the replay ids each of its references matched;
    the first reference that matches decides. Returns (replay id, reason if none)."""
    for ref in row.replay_refs:
        ids = sorted(set(found.get(ref, [])))
        if len(ids) == 1:
            return ids[0], ""
        if len(ids) > 1:
            return None, f"{len(ids)} different replays are named {ref!r}"
    return None, f"no replay known as {' or '.join(repr(ref) for ref in row.replay_refs)}"


def classify(row: LabelRow, match: db.NameMatch) -> Literal["matched", "waiting"] | str:
    """'matched', 'waiting' (replay not parsed yet), or why the player is unmatched."""
    if match.parsed:
        if len(match.player_indexes) == 1:
            return "matched"
        team = "blue" if row.team == 0 else "orange"
        if not match.player_indexes:
            return f"the replay has no {team} player named {row.player_name!r}"
        return f"{len(match.player_indexes)} {team} players are named {row.player_name!r}"
    if match.replay_status == "failed":
        return f"the replay failed to parse: {match.status_reason}"
    return "waiting"


def to_skill_label(row: LabelRow, replay_id: str, source: str) -> db.SkillLabel:
    return db.SkillLabel(
        replay_id=replay_id,
        team=row.team,
        player_name=row.player_name,
        source=source,
        skill_rating=row.skill_rating,
        rank_tier=row.rank.tier if row.rank else None,
        rank_division=row.rank.division if row.rank else None,
        rank_name=row.rank.name if row.rank else None,
        platform_id=row.platform_id,
    )


async def find_replays(conn: asyncpg.Connection, rows: Sequence[LabelRow]) -> dict[str, list[str]]:
    """Reference -> replay ids: Ballchasing ids the collector downloaded, then file names
    (a reference ``x`` also matches a file ``x.replay``)."""
    refs = sorted({ref for row in rows for ref in row.replay_refs})
    found: dict[str, list[str]] = {
        ref: [sha] for ref, sha in (await db.ballchasing_replay_ids(conn, refs)).items()
    }
    names = [*refs, *(f"{ref}.replay" for ref in refs if not ref.endswith(".replay"))]
    by_name = await db.replay_ids_by_filename(conn, names)
    for ref in refs:
        if ref not in found:
            ids = by_name.get(ref, []) + by_name.get(f"{ref}.replay", [])
            if ids:
                found[ref] = ids
    return found


async def import_labels(
    conn: asyncpg.Connection,
    rows: Sequence[LabelRow],
    source: str,
    known: dict[str, list[str]] | None = None,
) -> ImportReport:
    """Match rows to replays and players, store the matched and waiting ones, report the rest.

    ``known`` maps references to replay ids already (the collector knows what it downloaded);
    otherwise :func:`find_replays` looks them up. Of two rows for the same player, the later
    one wins and the earlier is reported as invalid."""
    report = ImportReport(source)
    found = known if known is not None else await find_replays(conn, rows)
    placed: list[tuple[LabelRow, str]] = []
    for row in rows:
        replay_id, reason = pick_replay(row, found)
        if replay_id is None:
            report.unmatched_replay.append(Unmatched(row, reason))
        else:
            placed.append((row, replay_id))
    matches = await db.match_players(
        conn, [(replay_id, row.team, row.player_name) for row, replay_id in placed]
    )
    chosen: dict[tuple[str, int, str], tuple[LabelRow, str]] = {}
    for (row, replay_id), match in zip(placed, matches, strict=True):
        outcome = classify(row, match)
        if outcome not in ("matched", "waiting"):
            report.unmatched_player.append(Unmatched(row, outcome))
            continue
        key = (replay_id, row.team, match.name_key)
        if key in chosen:
            earlier = chosen[key][0]
            report.invalid.append(
                InvalidRow(earlier.line, f"same replay, team and player as line {row.line}")
            )
        chosen[key] = (row, outcome)
    labels = [to_skill_label(row, key[0], source) for key, (row, _) in chosen.items()]
    async with conn.transaction():
        report.imported, report.updated = await db.upsert_skill_labels(conn, labels)
    report.unchanged = len(labels) - report.imported - report.updated
    report.waiting = [row for row, outcome in chosen.values() if outcome == "waiting"]
    report.invalid.sort(key=lambda bad: bad.line)
    return report
