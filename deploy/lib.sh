# Shared by the deploy scripts that run a server in the background (kafka.sh, minio.sh,
# postgres.sh, prometheus.sh); sourced, not run. Each script sets NAME (its log prefix) before sourcing.
#   PID_FILE, PID_MARKER: running_pid, stop_server. STOP_SECONDS [60]: stop_server.

log() { echo "$NAME: $*"; }
die() { echo "$NAME: ERROR: $*" >&2; exit 1; }

# Succeeds iff something accepts connections on host:port (bash's /dev/tcp).
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

# Prints the pid if *our* server is running: the pid file names a live process whose command
# line carries PID_MARKER (a guard against pid reuse after a crash or reboot); else returns 1.
running_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$PID_MARKER" || return 1
    echo "$pid"
}

# TERM, then KILL after STOP_SECONDS; idempotent.
stop_server() {
    local pid i limit="${STOP_SECONDS:-60}"
    if ! pid="$(running_pid)"; then
        log "not running"
        rm -f "$PID_FILE"
        return 0
    fi
    log "stopping (pid $pid) ..."
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 2 * limit; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "still alive after $limit s, sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 1
    fi
    rm -f "$PID_FILE"
    log "stopped"
}

# wait_ready PID URL LOG WHAT: until URL answers (ready) or PID exits or START_TIMEOUT [60] s
# pass; on failure shows the log's tail, removes PID_FILE (if PID exited) and dies.
wait_ready() {
    local pid="$1" url="$2" log_file="$3" what="$4"
    local deadline=$((SECONDS + ${START_TIMEOUT:-60}))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            show_log_tail "$log_file"
            rm -f "$PID_FILE"
            die "$what exited during startup (see $log_file)"
        fi
        if curl -fsS -o /dev/null "$url" 2>/dev/null; then
            log "ready (pid $pid, log $log_file)"
            return 0
        fi
        sleep 0.5
    done
    show_log_tail "$log_file"
    die "$what did not become ready within ${START_TIMEOUT:-60}s (pid $pid; '$0 stop' kills it)"
}

# status_server WHERE: "running (pid, WHERE)" and 0, or "not running" and 1.
status_server() {
    local pid
    if pid="$(running_pid)"; then
        log "running (pid $pid, $1)"
        return 0
    fi
    log "not running"
    return 1
}

# Shows the last lines of a server's log on stderr (after a failed start).
show_log_tail() {
    echo "---- last lines of $1 ----" >&2
    tail -n "${2:-30}" "$1" >&2 || true
}

# dispatch "start stop status" "$@": runs cmd_$1 if $1 is one of the commands, else usage.
dispatch() {
    local commands="$1"
    shift
    if [[ " $commands " == *" ${1:-} "* && -n "${1:-}" ]]; then
        "cmd_$1"
    else
        echo "usage: $0 {${commands// /|}}" >&2
        exit 2
    fi
}
