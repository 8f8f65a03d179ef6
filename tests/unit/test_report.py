"""`rlimpact score --format json|csv` against the schema README documents, and `rlimpact report`
in headless Chromium: the page needs no network and its charts show the replay's data."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from services.cli.offline import CSV_COLUMNS, PLAYER_FIELDS, REPLAY_FIELDS
from services.parser.parse import parse_replay_file
from shared.settings import REPO_ROOT
from tests.support.chromium import headless_chromium
from tests.unit.test_cli import _cli

BLUE, ORANGE = (31, 119, 180), (255, 127, 14)


def _documented_fields(section: str) -> list[str]:
    """The first column of the README table under the heading ``section``."""
    text = (REPO_ROOT / "README.md").read_text()
    body = text.split(section, 1)[1].split("\n\n|", 1)[1].split("\n\n", 1)[0]
    return [re.sub(r"[`|]", "", line.split("|")[1]).strip() for line in body.splitlines()[2:]]


def test_readme_documents_the_score_formats():
    assert _documented_fields("#### `score --format json`: a replay") == list(REPLAY_FIELDS)
    assert _documented_fields("#### `score --format json`: a player") == list(PLAYER_FIELDS)
    assert _documented_fields("#### `score --format csv`") == list(CSV_COLUMNS)


def test_score_json_and_csv_follow_the_schema(standard_replay):
    as_json = _cli("score", str(standard_replay.path), "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    (replay,) = document["replays"]
    assert set(replay) == {*REPLAY_FIELDS, "players"}
    assert replay["replay_id"] == standard_replay.sha256 and replay["in_scope"] in (True, False)
    players = parse_replay_file(standard_replay.path, standard_replay.sha256).players
    assert len(replay["players"]) == len(players)
    for player in replay["players"]:
        assert list(player) == list(PLAYER_FIELDS)
        assert player["team"] in ("blue", "orange")
        assert player["impact"] == pytest.approx(
            player["offence"] + player["defence"] + player["pace"], abs=3e-3
        )
    as_csv = _cli("score", str(standard_replay.path), "--format", "csv")
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert list(rows[0]) == list(CSV_COLUMNS) and len(rows) == len(players)
    for row, player in zip(rows, replay["players"], strict=True):
        assert row["player"] == player["player"]
        assert float(row["impact"]) == pytest.approx(player["impact"])
        assert int(row["touches"]) == player["touches"]


def test_score_json_reports_a_rejected_file(tmp_path, standard_replay):
    bad = tmp_path / "cut.replay"
    bad.write_bytes(standard_replay.path.read_bytes()[:5000])
    result = _cli("score", str(bad), str(standard_replay.path), "--format", "json")
    assert result.returncode == 0, result.stderr
    rejected, scored = json.loads(result.stdout)["replays"]
    assert rejected["file"] == "cut.replay" and rejected["rejected"]
    assert scored["players"]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with headless_chromium("1100,1400") as driver:
        yield driver


def _near(image: Image.Image, colour: tuple[int, int, int], tolerance: int = 40) -> int:
    pixels = np.asarray(image.convert("RGB"), dtype=np.int32)
    return int((np.abs(pixels - np.array(colour)).sum(axis=2) < tolerance).sum())


def _columns_with(image: Image.Image, colour: tuple[int, int, int]) -> int:
    pixels = np.asarray(image.convert("RGB"), dtype=np.int32)
    hit = np.abs(pixels - np.array(colour)).sum(axis=2) < 40
    return int(hit.any(axis=0).sum())


def test_report_page_shows_the_match_in_chromium(tmp_path, standard_replay, browser):
    from selenium.webdriver.common.by import By

    result = _cli("report", str(standard_replay.path), "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    page = tmp_path / f"{standard_replay.path.stem}.html"
    text = page.read_text()
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in text and "<script src" not in text and "<link" not in text
    scored = json.loads(_cli("score", str(standard_replay.path), "--format", "json").stdout)
    (replay,) = scored["replays"]

    browser.get(page.as_uri())
    rows = browser.find_elements(By.CSS_SELECTOR, "#players tbody tr")
    assert len(rows) == len(replay["players"])
    shown = {
        r.find_elements(By.TAG_NAME, "td")[1].text: r.find_element(By.CLASS_NAME, "impact").text
        for r in rows
    }
    for player in replay["players"]:
        assert float(shown[player["player"].strip()]) == pytest.approx(player["impact"], abs=0.051)
    goals = browser.find_elements(By.CSS_SELECTOR, "#p-score line.goal")
    assert len(goals) == sum(replay["goals"])
    touches = browser.find_elements(By.CSS_SELECTOR, "#p-score line.touch")
    assert len(touches) == sum(p["touches"] for p in replay["players"])
    assert len(browser.find_elements(By.CSS_SELECTOR, "#impact polyline.player-impact")) == len(
        rows
    )

    chart = Image.open(io.BytesIO(browser.find_element(By.ID, "p-score").screenshot_as_png))
    chart.save(tmp_path / "p-score.png")
    width = chart.size[0]
    # both teams' P(score) lines run across the chart (live play: gaps after goals)
    assert _columns_with(chart, BLUE) > 0.5 * width
    assert _columns_with(chart, ORANGE) > 0.5 * width
    impact = Image.open(io.BytesIO(browser.find_element(By.ID, "impact").screenshot_as_png))
    assert _near(impact, BLUE) > 500 and _near(impact, ORANGE) > 500
    # the lines follow the data: they rise and fall over much of the chart's height
    rows_blue = np.flatnonzero(
        (np.abs(np.asarray(chart.convert("RGB"), np.int32) - np.array(BLUE)).sum(axis=2) < 40).any(
            axis=1
        )
    )
    assert rows_blue.max() - rows_blue.min() > 0.3 * chart.size[1]
