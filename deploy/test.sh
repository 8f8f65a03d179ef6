#!/usr/bin/env bash
# The test command: sets up .venv, checks style and types, runs unit and integration tests, then the
# chaos suite.
# The integration tests start their own Kafka and Postgres through deploy/stack.sh.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$REPO_ROOT"
bash deploy/setup.sh trainer,dev
# MinIO for the bucket-source test: built once from the Go module proxy into .rlimpact/bin.
bash deploy/minio.sh install
# Debian's Prometheus and promtool: the alert rules' unit tests and the monitoring integration test.
bash deploy/prometheus.sh install
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# Types: shared/ and services/ ([tool.mypy] in pyproject.toml).
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
# The chaos suite (tests/chaos): its own stack under the supervisor, Postgres and Kafka stopped,
# services killed, with replays in flight. A step of its own, after the others, when the
# command runs everything (no arguments).
if [[ $# -eq 0 ]]; then
    .venv/bin/python -m pytest -q -m chaos tests/chaos
fi
