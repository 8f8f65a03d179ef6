#!/usr/bin/env bash
# A local Prometheus (Debian's package) scraping every instance of every rlimpact service, with
# the alert rules of deploy/alerts.yml.
#
# Usage: deploy/prometheus.sh {install|config|start|stop|status}
#
#   install  apt-get install prometheus (prometheus + promtool), unless both are on PATH
#   config   write the configuration (below) and check it with promtool
#   start    config, then start in the background on 127.0.0.1 and wait until it is ready
#
# The targets come from a file_sd file, $RLIMPACT_DATA_DIR/run/prometheus-targets.json, which the
# supervisor (`rlimpact up` / `rlimpact supervise`) keeps up to date: one entry per instance, its
# /metrics host:port and the labels service and replica. Prometheus re-reads it when it changes.
#
# Environment (defaults in brackets):
#   RLIMPACT_DATA_DIR                   [<repo root>/.rlimpact]  data in $RLIMPACT_DATA_DIR/prometheus
#   RLIMPACT_PROMETHEUS_PORT            [9090]                   listens on 127.0.0.1 only
#   RLIMPACT_PROMETHEUS_SCRAPE_SECONDS  [5]                      scrape and rule evaluation interval
#   RLIMPACT_PROMETHEUS_RETENTION       [7d]                     how long samples are kept
#   RLIMPACT_PROMETHEUS_START_TIMEOUT   [60]                     seconds to wait for readiness
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd -P)"

DATA_DIR="${RLIMPACT_DATA_DIR:-$REPO_ROOT/.rlimpact}"
PORT="${RLIMPACT_PROMETHEUS_PORT:-9090}"
SCRAPE_SECONDS="${RLIMPACT_PROMETHEUS_SCRAPE_SECONDS:-5}"
RETENTION="${RLIMPACT_PROMETHEUS_RETENTION:-7d}"
START_TIMEOUT="${RLIMPACT_PROMETHEUS_START_TIMEOUT:-60}"

mkdir -p "$DATA_DIR"
DATA_DIR="$(cd "$DATA_DIR" && pwd -P)"
PROM_HOME="$DATA_DIR/prometheus"
PID_FILE="$PROM_HOME/prometheus.pid"
LOG_FILE="$PROM_HOME/prometheus.log"
CONFIG_FILE="$PROM_HOME/prometheus.yml"
TARGETS_FILE="$DATA_DIR/run/prometheus-targets.json"

NAME=prometheus
PID_MARKER="--storage.tsdb.path=$PROM_HOME/data"
STOP_SECONDS=15
# shellcheck source=deploy/lib.sh
source "$SCRIPT_DIR/lib.sh"

cmd_install() {
    if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
        return 0
    fi
    local sudo=""
    [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
    log "installing Debian's prometheus package (apt-get) ..."
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    command -v prometheus >/dev/null && command -v promtool >/dev/null \
        || die "apt-get install prometheus did not provide prometheus and promtool"
    # The package enables a system-wide Prometheus on :9090 (all interfaces); this project runs
    # its own, on 127.0.0.1, started by this script.
    if command -v systemctl >/dev/null && systemctl is-enabled prometheus >/dev/null 2>&1; then
        log "disabling the package's system service (this script runs Prometheus itself)"
        $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
    log "installed $(prometheus --version 2>&1 | head -n 1)"
}

write_config() {
    mkdir -p "$PROM_HOME" "$(dirname "$TARGETS_FILE")"
    # A missing file_sd file is only an empty target list; write one so the intent is visible.
    [[ -f "$TARGETS_FILE" ]] || echo "[]" >"$TARGETS_FILE"
    cat >"$CONFIG_FILE" <<EOF
# Written by deploy/prometheus.sh; edits are overwritten on the next start.
global:
  scrape_interval: ${SCRAPE_SECONDS}s
  scrape_timeout: ${SCRAPE_SECONDS}s
  evaluation_interval: ${SCRAPE_SECONDS}s
rule_files:
  - $SCRIPT_DIR/alerts.yml
scrape_configs:
  - job_name: rlimpact
    # The services label their own series with service; the target's labels fill in only
    # what the series lack (up, scrape_*), so the two never clash.
    honor_labels: true
    file_sd_configs:
      - files: ["$TARGETS_FILE"]
        refresh_interval: ${SCRAPE_SECONDS}s  # besides the file watch, which may miss a change
EOF
}

cmd_config() {
    cmd_install
    write_config
    promtool check config "$CONFIG_FILE" >/dev/null || die "promtool check config $CONFIG_FILE failed"
    log "config $CONFIG_FILE (targets from $TARGETS_FILE)"
}

cmd_start() {
    local pid
    if pid="$(running_pid)"; then
        log "already running (pid $pid, http://127.0.0.1:$PORT)"
        return 0
    fi
    port_open 127.0.0.1 "$PORT" && die "port $PORT on 127.0.0.1 is already in use (set RLIMPACT_PROMETHEUS_PORT)"
    cmd_config
    mkdir -p "$PROM_HOME/data"
    [[ -f "$LOG_FILE" ]] && mv -f "$LOG_FILE" "$LOG_FILE.prev"
    log "starting on 127.0.0.1:$PORT (data $PROM_HOME/data) ..."
    (cd "$PROM_HOME" && exec nohup setsid prometheus --config.file="$CONFIG_FILE" \
        "$PID_MARKER" --storage.tsdb.retention.time="$RETENTION" \
        --web.listen-address="127.0.0.1:$PORT" >"$LOG_FILE" 2>&1 </dev/null) &
    pid=$!
    echo "$pid" >"$PID_FILE"
    wait_ready "$pid" "http://127.0.0.1:$PORT/-/ready" "$LOG_FILE" Prometheus
}

cmd_stop() {
    stop_server
}

cmd_status() {
    status_server "http://127.0.0.1:$PORT"
}

dispatch "install config start stop status" "$@"
