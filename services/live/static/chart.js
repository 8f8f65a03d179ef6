// Each team's P(score) over a live match, drawn like the report's chart
// (services/scorer/report.py: same colours, dashed goal lines, minute ticks), from the
// "timeline" and "point" events of /scores/stream (services/live/timeline.py).
"use strict";

const TEAM_COLOURS = ["#1f77b4", "#ff7f0e"];
const TEAM_NAMES = ["blue", "orange"];
const SVG_NS = "http://www.w3.org/2000/svg";
const REGULATION_SECONDS = 300;

class TimelineChart {
  // options: width, height, margin, panel (fill the plot area), labels (axes text),
  // window (seconds: show only the last ones; 0: the whole match, at least regulation time)
  constructor(svg, options = {}) {
    this.svg = svg;
    this.o = Object.assign(
      { width: 1000, height: 260, margin: 40, panel: true, labels: true, window: 0 }, options);
    this.points = [];  // [seconds, p_blue, p_orange]
    this.goals = [];   // [seconds, team]
    this.pending = false;
    svg.setAttribute("viewBox", `0 0 ${this.o.width} ${this.o.height}`);
    svg.setAttribute("font-family", "sans-serif");
  }

  // A "timeline" event replaces what is known; a "point" event adds to it.
  merge(kind, data) {
    if (kind === "timeline") {
      this.points = data.points.slice();
      this.goals = data.goals.slice();
    } else {
      this.points.push(...data.points);
      this.goals.push(...data.goals);
    }
    if (!this.pending) {  // one redraw per animation frame, however many updates came
      this.pending = true;
      requestAnimationFrame(() => { this.pending = false; this.draw(); });
    }
  }

  draw() {
    const { width, height, margin, window } = this.o;
    const last = Math.max(0, ...this.points.map((p) => p[0]));
    const start = window ? Math.max(0, last - window) : 0;
    const end = window ? start + window : Math.max(REGULATION_SECONDS, last);
    const shown = this.points.filter((p) => p[0] >= start);
    const peak = Math.max(0.3, ...shown.map((p) => Math.max(p[1], p[2])));
    const top = peak * 1.05;
    const x = (t) => margin + ((t - start) / (end - start)) * (width - 2 * margin);
    const y = (v) => height - margin / 2 - (v / top) * (height - margin);
    const parts = [];
    if (this.o.panel) {
      parts.push(`<rect x="${margin}" y="${margin / 2}" width="${width - 2 * margin}" ` +
        `height="${height - margin}" fill="#fafafa" stroke="#ccc"/>`);
    }
    if (this.o.labels) parts.push(...this.axes(x, y, start, end, peak));
    for (const team of [0, 1]) {
      for (const run of this.runs(shown)) {
        const path = run.map((p) => `${x(p[0]).toFixed(1)},${y(p[1 + team]).toFixed(1)}`).join(" ");
        parts.push(`<polyline class="p-score team-${team}" fill="none" ` +
          `stroke="${TEAM_COLOURS[team]}" stroke-width="2" points="${path}"/>`);
      }
    }
    for (const [t, team] of this.goals.filter((g) => g[0] >= start)) {
      parts.push(`<line class="goal" x1="${x(t).toFixed(1)}" x2="${x(t).toFixed(1)}" ` +
        `y1="${margin / 2}" y2="${height - margin / 2}" stroke="${TEAM_COLOURS[team]}" ` +
        `stroke-dasharray="5 3" stroke-width="2"><title>goal ${TEAM_NAMES[team]}</title></line>`);
    }
    this.svg.innerHTML = parts.join("");
  }

  axes(x, y, start, end, peak) {
    const { width, height, margin } = this.o;
    const parts = [`<text x="6" y="14" font-size="12" fill="#9aa0a6">` +
      `P(team scores within the horizon), by the game clock; goals dashed</text>`];
    for (const tick of [0, peak / 2, peak]) {
      const v = Number(tick.toFixed(2));
      parts.push(`<line x1="${margin}" x2="${width - margin}" y1="${y(v).toFixed(1)}" ` +
        `y2="${y(v).toFixed(1)}" stroke="#e4e4e4"/>`);
      parts.push(`<text x="${margin - 4}" y="${(y(v) + 4).toFixed(1)}" font-size="10" ` +
        `text-anchor="end" fill="#9aa0a6">${v}</text>`);
    }
    for (let minute = Math.floor(start / 60) + 1; minute * 60 <= end; minute++) {
      parts.push(`<text x="${x(minute * 60).toFixed(1)}" y="${height - 4}" font-size="10" ` +
        `text-anchor="middle" fill="#9aa0a6">${minute}:00</text>`);
    }
    return parts;
  }

  // Points split at each goal: the line breaks where play restarts, as on the report.
  runs(points) {
    const cuts = this.goals.map((g) => g[0]).sort((a, b) => a - b);
    const runs = [[]];
    let next = 0;
    for (const p of points) {
      while (next < cuts.length && p[0] > cuts[next]) {
        next++;
        if (runs[runs.length - 1].length) runs.push([]);
      }
      runs[runs.length - 1].push(p);
    }
    return runs.filter((run) => run.length);
  }
}

function clock(seconds, overtime) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.max(0, Math.round(seconds));
  return `${overtime ? "+" : ""}${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function teamProbabilities(score) {
  const p = [0, 0];
  for (const player of score.players) p[player.team] = player.p_score;
  return p;
}
