#!/usr/bin/env bash
# Local PostgreSQL cluster for development, using Debian's installed server.
#
# Usage: deploy/postgres.sh {start|stop|status}
#
# Environment (defaults in brackets):
#   RLIMPACT_DATA_DIR   [<repo root>/.rlimpact]   cluster in $RLIMPACT_DATA_DIR/postgres
#   RLIMPACT_PG_PORT    [5433]     listens on 127.0.0.1 only
#   RLIMPACT_PG_USER    [rlimpact] superuser role, password "rlimpact"
#   RLIMPACT_PG_DB      [rlimpact]
#   RLIMPACT_PG_BINDIR  [newest /usr/lib/postgresql/*/bin, else pg_config --bindir]
#
# Authentication is "trust" for local socket and 127.0.0.1/::1 connections.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd -P)"

DATA_DIR="${RLIMPACT_DATA_DIR:-$REPO_ROOT/.rlimpact}"
PG_PORT="${RLIMPACT_PG_PORT:-5433}"
PG_USER="${RLIMPACT_PG_USER:-rlimpact}"
PG_DB="${RLIMPACT_PG_DB:-rlimpact}"
PG_PASSWORD="rlimpact"

NAME=postgres
# shellcheck source=deploy/lib.sh
source "$SCRIPT_DIR/lib.sh"

# Made absolute: pg_ctl/postgres run with another working directory.
mkdir -p "$DATA_DIR"
DATA_DIR="$(cd "$DATA_DIR" && pwd -P)"

PG_HOME="$DATA_DIR/postgres"
PGDATA="$PG_HOME/data"
PG_LOG="$PG_HOME/postgres.log"
SOCK_DIR="$PG_HOME/run"
# Unix socket paths are limited to ~107 bytes; fall back to /tmp for deep dirs.
if ((${#SOCK_DIR} + 20 > 100)); then
    SOCK_DIR="/tmp"
fi

find_bindir() {
    if [[ -n "${RLIMPACT_PG_BINDIR:-}" ]]; then
        [[ -x "$RLIMPACT_PG_BINDIR/pg_ctl" ]] || die "RLIMPACT_PG_BINDIR=$RLIMPACT_PG_BINDIR has no pg_ctl"
        echo "$RLIMPACT_PG_BINDIR"
        return
    fi
    # An existing cluster must be run by its own major version, even if a
    # newer server was installed since.
    if [[ -f "$PGDATA/PG_VERSION" ]]; then
        local v
        v="$(cat "$PGDATA/PG_VERSION")"
        if [[ -x "/usr/lib/postgresql/$v/bin/pg_ctl" ]]; then
            echo "/usr/lib/postgresql/$v/bin"
            return
        fi
    fi
    local d
    d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    if [[ -n "$d" && -x "$d/pg_ctl" && -x "$d/initdb" ]]; then
        echo "$d"
        return
    fi
    if command -v pg_config >/dev/null 2>&1; then
        d="$(pg_config --bindir)"
        if [[ -x "$d/pg_ctl" && -x "$d/initdb" ]]; then
            echo "$d"
            return
        fi
    fi
    die "no PostgreSQL server binaries found (looked in /usr/lib/postgresql/*/bin and pg_config --bindir). Install them: apt-get install postgresql"
}

BINDIR="$(find_bindir)"

# PostgreSQL refuses to run as root: as root, run the server tools as the
# `postgres` system user and give it the cluster directory.
if [[ "$(id -u)" == 0 ]]; then
    id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' system user to run the server as (apt-get install postgresql creates it)"
    as_pg() { runuser -u postgres -- "$@"; }
    RUN_AS=postgres
else
    as_pg() { "$@"; }
    RUN_AS="$(id -un)"
fi

pg_ctl_() { as_pg "$BINDIR/pg_ctl" -D "$PGDATA" "$@"; }
# Port of the running server (line 4 of postmaster.pid), else the configured one.
live_port() { sed -n 4p "$PGDATA/postmaster.pid" 2>/dev/null | grep -E '^[0-9]+$' || echo "$PG_PORT"; }
psql_() { "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$(live_port)" -U postgres "$@"; }

is_running() {
    [[ -f "$PGDATA/PG_VERSION" ]] || return 1
    pg_ctl_ status >/dev/null 2>&1
}

prepare_dirs() {
    mkdir -p "$PG_HOME"
    if [[ "$RUN_AS" == postgres && "$(id -u)" == 0 ]]; then
        mkdir -p "$PGDATA" "$SOCK_DIR"
        # Only the cluster's own directory is chowned; the parents just need
        # to be traversable by the postgres user.
        if [[ "$(stat -c %U "$PG_HOME")" != postgres || "$(stat -c %U "$PGDATA")" != postgres ]]; then
            chown -R postgres: "$PG_HOME"
        fi
        [[ "$SOCK_DIR" == /tmp ]] || chown postgres: "$SOCK_DIR"
        runuser -u postgres -- test -x "$PG_HOME" \
            || die "user postgres cannot reach $PG_HOME (a parent directory is not world-traversable); use another RLIMPACT_DATA_DIR"
    else
        mkdir -p "$PGDATA" "$SOCK_DIR"
    fi
    chmod 700 "$PGDATA"
}

init_cluster() {
    [[ -f "$PGDATA/PG_VERSION" ]] && return 0
    log "initdb into $PGDATA ($BINDIR) ..."
    # Bootstrap superuser is always "postgres" (not the OS user), so the role
    # setup below can connect the same way whoever runs the script.
    as_pg "$BINDIR/initdb" -D "$PGDATA" -U postgres -E UTF8 --locale=C \
        --auth-local=trust --auth-host=trust >"$PG_HOME/initdb.log" 2>&1 \
        || { tail -n 20 "$PG_HOME/initdb.log" >&2; die "initdb failed (see $PG_HOME/initdb.log)"; }
    # Our settings live in their own file, rewritten on every start.
    echo "include_if_exists = 'rlimpact.conf'" >>"$PGDATA/postgresql.conf"
}

write_conf() {
    # Single quotes inside values would need doubling; paths are escaped.
    local sock="${SOCK_DIR//\'/\'\'}"
    local f="$PGDATA/rlimpact.conf"
    as_pg tee "$f" >/dev/null <<EOF
# Generated by deploy/postgres.sh on every start; edits are overwritten.
listen_addresses = '127.0.0.1'
port = ${PG_PORT}
unix_socket_directories = '${sock}'
max_connections = 100
shared_buffers = 128MB
EOF
}

ensure_role_db() {
    local exists
    exists="$(psql_ -d postgres -tAc "SELECT 1 FROM pg_roles WHERE rolname = '${PG_USER//\'/\'\'}'")"
    if [[ "$exists" != 1 ]]; then
        log "creating role $PG_USER"
        # Via stdin: psql does not interpolate :variables in -c commands.
        psql_ -d postgres -v u="$PG_USER" -v p="$PG_PASSWORD" <<<"CREATE ROLE :\"u\" SUPERUSER LOGIN PASSWORD :'p';"
    fi
    exists="$(psql_ -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '${PG_DB//\'/\'\'}'")"
    if [[ "$exists" != 1 ]]; then
        log "creating database $PG_DB"
        psql_ -d postgres -v d="$PG_DB" -v u="$PG_USER" <<<"CREATE DATABASE :\"d\" OWNER :\"u\" ENCODING 'UTF8';"
    fi
}

cmd_start() {
    if is_running; then
        log "already running ($PGDATA, 127.0.0.1:$(live_port))"
        [[ "$(live_port)" == "$PG_PORT" ]] || log "note: it runs on port $(live_port), not RLIMPACT_PG_PORT=$PG_PORT; stop and start to switch"
        ensure_role_db
        return 0
    fi
    if port_open 127.0.0.1 "$PG_PORT"; then
        die "port $PG_PORT on 127.0.0.1 is already in use by another process (set RLIMPACT_PG_PORT)"
    fi
    prepare_dirs
    init_cluster
    write_conf
    log "starting PostgreSQL $(cat "$PGDATA/PG_VERSION") on 127.0.0.1:$PG_PORT ..."
    if ! pg_ctl_ start -w -t 60 -l "$PG_LOG" >/dev/null; then
        show_log_tail "$PG_LOG"
        die "pg_ctl start failed (see $PG_LOG)"
    fi
    local i
    for ((i = 0; i < 30; i++)); do
        "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres && break
        sleep 1
    done
    "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres || die "server started but pg_isready fails (see $PG_LOG)"
    ensure_role_db
    log "ready (postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB, log $PG_LOG)"
}

cmd_stop() {
    if ! is_running; then
        log "not running"
        return 0
    fi
    log "stopping ..."
    pg_ctl_ stop -m fast -w -t 60 >/dev/null
    log "stopped"
}

cmd_status() {
    if is_running; then
        log "running ($PGDATA, 127.0.0.1:$(live_port))"
        return 0
    fi
    log "not running"
    return 1
}

dispatch "start stop status" "$@"
