#!/usr/bin/env bash
# A local S3-compatible server (MinIO, single drive) for the bucket source and its tests.
#
# Usage: deploy/minio.sh {install|start|stop|status}
#
# MinIO is built from source through the Go module proxy (`go install`, Go 1.24+ on PATH) into
# $RLIMPACT_MINIO_BIN_DIR, once per version; later starts reuse the binary.
#
# Environment (defaults in brackets):
#   RLIMPACT_DATA_DIR             [<repo root>/.rlimpact]   data in $RLIMPACT_DATA_DIR/minio
#   RLIMPACT_S3_ENDPOINT          [http://127.0.0.1:9000]   where to listen (console on port+1)
#   RLIMPACT_S3_ACCESS_KEY        [rlimpact]                root user
#   RLIMPACT_S3_SECRET_KEY        [rlimpact-secret]         root password (8+ characters)
#   RLIMPACT_MINIO_VERSION        [see MINIO_VERSION below] a github.com/minio/minio version
#   RLIMPACT_MINIO_BIN_DIR        [<repo root>/.rlimpact/bin]
#   RLIMPACT_MINIO_START_TIMEOUT  [60]                      seconds to wait for readiness
#
# Buckets are NOT created here: `rlimpact bucket --create` (or the tests) do that.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd -P)"

DATA_DIR="${RLIMPACT_DATA_DIR:-$REPO_ROOT/.rlimpact}"
ENDPOINT="${RLIMPACT_S3_ENDPOINT:-http://127.0.0.1:9000}"
ACCESS_KEY="${RLIMPACT_S3_ACCESS_KEY:-rlimpact}"
SECRET_KEY="${RLIMPACT_S3_SECRET_KEY:-rlimpact-secret}"
# MinIO tags its releases RELEASE.<date>, which Go sees as no version; this pseudo-version is the
# newest commit the module proxy serves.
MINIO_VERSION="${RLIMPACT_MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"
BIN_DIR="${RLIMPACT_MINIO_BIN_DIR:-$REPO_ROOT/.rlimpact/bin}"
START_TIMEOUT="${RLIMPACT_MINIO_START_TIMEOUT:-60}"

mkdir -p "$DATA_DIR"
DATA_DIR="$(cd "$DATA_DIR" && pwd -P)"
MINIO_HOME="$DATA_DIR/minio"
PID_FILE="$MINIO_HOME/minio.pid"
LOG_FILE="$MINIO_HOME/minio.log"
BINARY="$BIN_DIR/minio-$MINIO_VERSION"

NAME=minio
PID_MARKER="$MINIO_HOME/data"
STOP_SECONDS=15
# shellcheck source=deploy/lib.sh
source "$SCRIPT_DIR/lib.sh"

# host:port of the endpoint, which must be plain http on this machine.
hostport() {
    local rest="${ENDPOINT#http://}"
    [[ "$rest" != "$ENDPOINT" ]] || die "RLIMPACT_S3_ENDPOINT must be http://host:port, got $ENDPOINT"
    rest="${rest%%/*}"
    [[ "$rest" =~ ^[A-Za-z0-9.-]+:[0-9]+$ ]] || die "RLIMPACT_S3_ENDPOINT needs host:port, got $ENDPOINT"
    echo "$rest"
}

cmd_install() {
    [[ -x "$BINARY" ]] && return 0
    command -v go >/dev/null 2>&1 \
        || die "go not found on PATH; it is needed once to build MinIO (Debian: apt-get install golang, 1.24+)"
    log "building MinIO $MINIO_VERSION from the Go module proxy into $BIN_DIR (first run only) ..."
    local t0=$SECONDS tmp
    mkdir -p "$BIN_DIR"
    tmp="$(mktemp -d "$BIN_DIR/.build-XXXXXX")"
    # Into a temp dir, then renamed: an interrupted build never leaves a binary that looks whole.
    if ! GOBIN="$tmp" GOFLAGS=-buildvcs=false CGO_ENABLED=0 \
            go install "github.com/minio/minio@$MINIO_VERSION" >"$tmp/build.log" 2>&1; then
        tail -n 30 "$tmp/build.log" >&2 || true
        die "go install github.com/minio/minio@$MINIO_VERSION failed (log above)"
    fi
    mv -f "$tmp/minio" "$BINARY"
    rm -rf "$tmp"
    log "built $BINARY in $((SECONDS - t0)) s"
}

cmd_start() {
    local pid hp host port
    hp="$(hostport)"
    host="${hp%:*}"
    port="${hp##*:}"
    if pid="$(running_pid)"; then
        log "already running (pid $pid, $ENDPOINT)"
        return 0
    fi
    for p in "$port" "$((port + 1))"; do
        port_open "$host" "$p" && die "port $p on $host is already in use (set RLIMPACT_S3_ENDPOINT)"
    done
    ((${#SECRET_KEY} >= 8)) || die "RLIMPACT_S3_SECRET_KEY must have at least 8 characters"
    cmd_install
    mkdir -p "$MINIO_HOME/data"
    [[ -f "$LOG_FILE" ]] && mv -f "$LOG_FILE" "$LOG_FILE.prev"
    log "starting on $ENDPOINT (data $MINIO_HOME/data) ..."
    (cd "$MINIO_HOME" && MINIO_ROOT_USER="$ACCESS_KEY" MINIO_ROOT_PASSWORD="$SECRET_KEY" \
        MINIO_BROWSER=off MINIO_UPDATE=off exec nohup setsid "$BINARY" server --quiet \
        --address "$hp" --console-address "$host:$((port + 1))" "$MINIO_HOME/data" \
        >"$LOG_FILE" 2>&1 </dev/null) &
    pid=$!
    echo "$pid" >"$PID_FILE"
    wait_ready "$pid" "$ENDPOINT/minio/health/ready" "$LOG_FILE" MinIO
}

cmd_stop() {
    stop_server
}

cmd_status() {
    status_server "$ENDPOINT"
}

dispatch "install start stop status" "$@"
