"""The offline CLI needs no server: Kafka and Postgres are pointed at closed ports here."""

from __future__ import annotations

import os
import subprocess
import sys

from services.parser.parse import parse_replay_file
from shared.settings import REPO_ROOT

NO_SERVERS = {"RLIMPACT_KAFKA_BOOTSTRAP": "127.0.0.1:1", "RLIMPACT_PG_PORT": "1"}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env={**os.environ, **NO_SERVERS},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_score_prints_every_player_of_a_3v3_replay(standard_replay):
    result = _cli("score", str(standard_replay.path))
    assert result.returncode == 0, result.stderr
    players = parse_replay_file(standard_replay.path, standard_replay.sha256).players
    rows = [
        line
        for line in result.stdout.splitlines()
        if line.startswith("  ") and "impact" not in line
    ]
    assert len(rows) == len(players) >= 6
    for player in players:
        line = next(row for row in rows if row.split()[0] == player.name.split()[0])
        assert ("blue" if player.team == 0 else "orange") in line
        float(line.split()[-1])


def test_score_reports_an_undecodable_file_and_fails(bad_replays):
    result = _cli("score", str(bad_replays[0].path))
    assert result.returncode == 1
    assert "rejected: undecodable replay" in result.stdout


def test_missing_path_is_a_clear_error():
    result = _cli("score", "/nonexistent.replay")
    assert result.returncode != 0 and "no such file or folder" in result.stderr
