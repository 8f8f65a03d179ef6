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

log() { echo "minio: $*"; }
die() { echo "minio: ERROR: $*" >&2; exit 1; }

# host:port of the endpoint, which must be plain http on this machine.
hostport() {
    local rest="${ENDPOINT#http://}"
    [[ "$rest" != "$ENDPOINT" ]] || die "RLIMPACT_S3_ENDPOINT must be http://host:port, got $ENDPOINT"
    rest="${rest%%/*}"
    [[ "$rest" =~ ^[A-Za-z0-9.-]+:[0-9]+$ ]] || die "RLIMPACT_S3_ENDPOINT needs host:port, got $ENDPOINT"
    echo "$rest"
}

port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

running_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # Guard against pid reuse: our server serves this data dir.
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$MINIO_HOME/data" || return 1
    echo "$pid"
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
    local deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$LOG_FILE" >&2 || true
            rm -f "$PID_FILE"
            die "MinIO exited during startup (see $LOG_FILE)"
        fi
        if curl -fsS -o /dev/null "$ENDPOINT/minio/health/ready" 2>/dev/null; then
            log "ready (pid $pid, $ENDPOINT, log $LOG_FILE)"
            return 0
        fi
        sleep 0.5
    done
    tail -n 30 "$LOG_FILE" >&2 || true
    die "MinIO did not become ready within ${START_TIMEOUT}s (pid $pid; 'deploy/minio.sh stop' kills it)"
}

cmd_stop() {
    local pid i
    if ! pid="$(running_pid)"; then
        log "not running"
        rm -f "$PID_FILE"
        return 0
    fi
    log "stopping (pid $pid) ..."
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "still alive after 15 s, sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PID_FILE"
    log "stopped"
}

cmd_status() {
    local pid
    if pid="$(running_pid)"; then
        log "running (pid $pid, $ENDPOINT)"
        return 0
    fi
    log "not running"
    return 1
}

case "${1:-}" in
install) cmd_install ;;
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*)
    echo "usage: $0 {install|start|stop|status}" >&2
    exit 2
    ;;
esac
