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


def test_a_replay_in_two_folders_is_featurized_once(standard_replay, tmp_path):
    from services.cli.offline import featurize_replays
    from shared.settings import Settings

    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
        (folder / "copy.replay").write_bytes(standard_replay.path.read_bytes())
    tables = featurize_replays([first, second], Settings())
    assert [path for path, _ in tables] == [first / "copy.replay"]


def test_train_evaluate_and_crossval_take_several_folders(tmp_path):
    from services.cli import build_parser

    parser = build_parser()
    folders = [str(tmp_path / "a"), str(tmp_path / "b")]
    assert len(parser.parse_args(["train", "--local", *folders]).local) == 2
    for command in ("evaluate", "crossval"):
        assert len(parser.parse_args([command, *folders]).replays) == 2
