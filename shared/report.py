"""One replay's scores as a self-contained HTML page: inline SVG and CSS, nothing fetched.

The page shows each team's P(score) over the match with the goals and every credited touch
(its height is the touch's value; hover for who and how much), the player table, and each
player's impact accumulated over the match. Pure: a :class:`ScoredReplay` in, a string out.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np

from shared.features.table import FeatureTable
from shared.impact import IMPACT_SCALE, ScoredReplay, impact_so_far
from shared.scope import in_scope

OUT_OF_SCOPE_NOTE = (
    "out of scope: the impact model is trained for Soccar on standard arenas (shared/scope.py); "
    "these scores are indicative only"
)
IMPACT_LEGEND = (
    "impact: value added by the player's touches, 100 = one goal "
    "(offence: team P(score) raised; defence: team P(concede) lowered)"
)


def report_notes(model_version: str, map_name: str | None, game_mode: str | None) -> list[str]:
    """The notes under a report's title: the model, the legend, and whether it is in scope."""
    notes = [f"model {model_version}", IMPACT_LEGEND]
    if not in_scope(map_name, game_mode):
        notes.append(OUT_OF_SCOPE_NOTE)
    return notes


TEAM_COLOURS = ("#1f77b4", "#ff7f0e")  # blue, orange
TEAM_NAMES = ("blue", "orange")
WIDTH, CHART_HEIGHT, IMPACT_HEIGHT = 1000, 320, 260
MARGIN = 48
PLAYER_DASHES = ("", "6 3", "2 2", "10 3 2 3", "1 4")


@dataclass(frozen=True)
class _Axis:
    t0: float
    t1: float
    low: float
    high: float
    height: int

    def x(self, t: float) -> float:
        return MARGIN + (t - self.t0) / max(self.t1 - self.t0, 1e-9) * (WIDTH - 2 * MARGIN)

    def y(self, v: float) -> float:
        span = max(self.high - self.low, 1e-9)
        return self.height - MARGIN / 2 - (v - self.low) / span * (self.height - MARGIN)


def _polyline(points: list[tuple[float, float]], colour: str, extra: str = "") -> str:
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    return f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" {extra} points="{path}"/>'


def _frame(axis: _Axis, label: str, ticks: list[float]) -> str:
    parts = [
        f'<rect x="{MARGIN}" y="{MARGIN / 2}" width="{WIDTH - 2 * MARGIN}" '
        f'height="{axis.height - MARGIN}" fill="#fafafa" stroke="#ccc"/>',
        f'<text x="6" y="14" font-size="12">{html.escape(label)}</text>',
    ]
    for tick in ticks:
        y = axis.y(tick)
        parts.append(
            f'<line x1="{MARGIN}" x2="{WIDTH - MARGIN}" y1="{y:.1f}" y2="{y:.1f}" '
            'stroke="#e4e4e4"/>'
        )
        parts.append(
            f'<text x="{MARGIN - 4}" y="{y + 4:.1f}" font-size="10" '
            f'text-anchor="end">{tick:g}</text>'
        )
    for minute in range(int(axis.t0 // 60) + 1, int(axis.t1 // 60) + 1):
        x = axis.x(minute * 60.0)
        parts.append(
            f'<text x="{x:.1f}" y="{axis.height - 4}" font-size="10" '
            f'text-anchor="middle">{minute}:00</text>'
        )
    return "".join(parts)


def _live_runs(table: FeatureTable) -> list[np.ndarray]:
    edges = np.diff(np.r_[0, table.live.astype(np.int8), 0])
    return [
        np.arange(a, b)
        for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True)
    ]


def _goal_lines(table: FeatureTable, axis: _Axis) -> str:
    parts = []
    for goal in table.goals:
        x = axis.x(goal.time - table.time[0])
        scorer = html.escape(goal.scorer or "?")
        parts.append(
            f'<line class="goal" x1="{x:.1f}" x2="{x:.1f}" y1="{MARGIN / 2}" '
            f'y2="{axis.height - MARGIN / 2}" '
            f'stroke="{TEAM_COLOURS[goal.team]}" stroke-dasharray="5 3" stroke-width="2">'
            f"<title>goal {TEAM_NAMES[goal.team]}: {scorer}</title></line>"
        )
    return "".join(parts)


def probability_chart(table: FeatureTable, scored: ScoredReplay) -> str:
    time = table.time - table.time[0]
    top = max(0.3, float(np.nanmax(scored.p_score[table.live])) if table.live.any() else 0.3)
    axis = _Axis(0.0, float(time[-1]) if time.size else 1.0, -0.08 * top, top * 1.05, CHART_HEIGHT)
    parts = [
        _frame(
            axis,
            "P(team scores within the horizon); goals dashed; credited touches below",
            [0, round(top / 2, 2), round(top, 2)],
        )
    ]
    for team in (0, 1):
        for run in _live_runs(table):
            step = max(1, run.size // 400)
            points = [(axis.x(time[i]), axis.y(scored.p_score[i, team])) for i in run[::step]]
            parts.append(_polyline(points, TEAM_COLOURS[team], f'class="p-score team-{team}"'))
    parts.append(_goal_lines(table, axis))
    names = {p.index: p.name for p in table.players}
    biggest = max((abs(c.value) for c in scored.credits), default=1.0) or 1.0
    base = axis.y(-0.04 * top)
    for credit in scored.credits:
        x = axis.x(time[credit.frame])
        length = 4 + 18 * abs(credit.value) / biggest
        y2 = base - length if credit.value >= 0 else base + min(length, MARGIN / 2)
        who = html.escape(names.get(credit.player_index, "?"))
        parts.append(
            f'<line class="touch" x1="{x:.1f}" x2="{x:.1f}" y1="{base:.1f}" y2="{y2:.1f}" '
            f'stroke="{TEAM_COLOURS[credit.team]}" stroke-width="2">'
            f"<title>{time[credit.frame]:.1f} s {who}: {IMPACT_SCALE * credit.value:+.1f} "
            f"(offence {IMPACT_SCALE * credit.offence:+.1f}, "
            f"defence {IMPACT_SCALE * credit.defence:+.1f})</title></line>"
        )
    return _svg("p-score", CHART_HEIGHT, parts)


def impact_chart(table: FeatureTable, scored: ScoredReplay) -> str:
    """Each player's impact so far: its touches' credits and its pace."""
    time = table.time - table.time[0]
    end = float(time[-1]) if time.size else 1.0
    so_far = impact_so_far(table, scored.credits)  # [T, P]
    # every touch's frame (a jump) and the frame before it, and a few hundred frames between
    marks = {c.frame for c in scored.credits} | {max(c.frame - 1, 0) for c in scored.credits}
    step = max(1, time.shape[0] // 400)
    frames = sorted(marks | set(range(0, time.shape[0], step)) | set(range(time.shape[0])[-1:]))
    low = float(min(so_far.min(initial=0.0), 0.0))
    high = float(max(so_far.max(initial=1.0), 0.0))
    axis = _Axis(0.0, end, low - 5, high + 5, IMPACT_HEIGHT)
    parts = [_frame(axis, "impact so far per player (100 = one goal)", [0.0])]
    parts.append(_goal_lines(table, axis))
    order = {team: 0 for team in (0, 1)}
    for player in table.players:
        dash = PLAYER_DASHES[order[player.team] % len(PLAYER_DASHES)]
        order[player.team] += 1
        values = so_far[:, player.index]
        xy = [(axis.x(time[f]), axis.y(values[f])) for f in frames]
        parts.append(
            _polyline_titled(
                [(axis.x(0.0), axis.y(0.0)), *xy], TEAM_COLOURS[player.team], dash, player.name
            )
        )
    return _svg("impact", IMPACT_HEIGHT, parts)


def _polyline_titled(points: list[tuple[float, float]], colour: str, dash: str, title: str) -> str:
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    return (
        f'<polyline class="player-impact" fill="none" stroke="{colour}" stroke-width="1.8" '
        f'stroke-dasharray="{dash}" points="{path}"><title>{html.escape(title)}</title></polyline>'
    )


def _svg(name: str, height: int, parts: list[str]) -> str:
    return (
        f'<svg id="{name}" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">{"".join(parts)}</svg>'
    )


def player_table(table: FeatureTable, scored: ScoredReplay) -> str:
    rows = []
    dash_of = {}
    order = {team: 0 for team in (0, 1)}
    for player in table.players:
        dash_of[player.index] = PLAYER_DASHES[order[player.team] % len(PLAYER_DASHES)]
        order[player.team] += 1
    for score in sorted(scored.scores, key=lambda s: (s.team, -s.impact)):
        colour = TEAM_COLOURS[score.team]
        line = (
            f'<svg width="40" height="10"><line x1="0" x2="40" y1="5" y2="5" stroke="{colour}" '
            f'stroke-width="2" stroke-dasharray="{dash_of[score.player_index]}"/></svg>'
        )
        rows.append(
            f'<tr data-player="{score.player_index}"><td>{line}</td>'
            f"<td>{html.escape(score.name)}</td>"
            f'<td style="color:{colour}">{TEAM_NAMES[score.team]}</td>'
            f'<td class="impact">{score.impact:.1f}</td><td>{score.offence:.1f}</td>'
            f"<td>{score.defence:.1f}</td><td>{score.pace:.1f}</td>"
            f"<td>{score.impact_per_minute:.2f}</td><td>{score.touches}</td></tr>"
        )
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "",
            "player",
            "team",
            "impact",
            "offence",
            "defence",
            "pace",
            "per min",
            "touches",
        )
    )
    return (
        f'<table id="players"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


STYLE = (
    "body{font-family:sans-serif;margin:16px;color:#222}"
    "table{border-collapse:collapse;margin:12px 0}"
    "td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:right}"
    "td:nth-child(2),th:nth-child(2){text-align:left}p.note{color:#555;max-width:1000px}"
)


def report_html(table: FeatureTable, scored: ScoredReplay, title: str, notes: list[str]) -> str:
    """The whole page."""
    goals = [sum(g.team == t for g in table.goals) for t in (0, 1)]
    paragraphs = "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f'<p id="score">blue {goals[0]} : {goals[1]} orange; '
        f"{len(scored.credits)} credited touches</p>"
        f"{paragraphs}{probability_chart(table, scored)}{player_table(table, scored)}"
        f"{impact_chart(table, scored)}</body></html>\n"
    )
