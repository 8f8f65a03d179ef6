#!/usr/bin/env bash
# Local development stack: Kafka (deploy/kafka.sh) + PostgreSQL (deploy/postgres.sh).
#
# Usage: deploy/stack.sh {start|stop|status}
# All RLIMPACT_* settings are passed through to both scripts.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"

case "${1:-}" in
start)
    "$SCRIPT_DIR/kafka.sh" start
    "$SCRIPT_DIR/postgres.sh" start
    ;;
stop)
    # Stop both even if the first one fails.
    rc=0
    "$SCRIPT_DIR/postgres.sh" stop || rc=1
    "$SCRIPT_DIR/kafka.sh" stop || rc=1
    exit "$rc"
    ;;
status)
    # Report both; exit 0 only if both are running.
    rc=0
    "$SCRIPT_DIR/kafka.sh" status || rc=1
    "$SCRIPT_DIR/postgres.sh" status || rc=1
    exit "$rc"
    ;;
*)
    echo "usage: $0 {start|stop|status}" >&2
    exit 2
    ;;
esac
