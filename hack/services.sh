#!/usr/bin/env bash
# Local backing services for integration tests, without Docker or systemd.
#
#   hack/services.sh up      install (apt, once) + start everything, wait until ready
#   hack/services.sh down    stop exactly what `up` started (by pid files)
#   hack/services.sh env     print `export STRATA_TEST_*=...` lines; use with eval
#   hack/services.sh status  print health of each service (exit 1 if any is down)
#
# Services (all bound to 127.0.0.1, non-default ports, overridable by env):
#   Redis standalone      STRATA_REDIS_PORT          (16379)
#   Redis Cluster 3x      STRATA_REDIS_CLUSTER_PORT  (17001; uses 17001..17003 + bus ports +10000)
#   Postgres 15           STRATA_POSTGRES_PORT       (15432; db/user/password strata/strata/strata)
#
# State (data, logs, pid files) lives in .cache/services/ (gitignored).
# `up` is idempotent: when everything is healthy it returns in about a second;
# stale pid files / half-started services are cleaned up and restarted.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SVC_DIR="${STRATA_SERVICES_DIR:-$ROOT/.cache/services}"
REDIS_PORT="${STRATA_REDIS_PORT:-16379}"
CLUSTER_PORT="${STRATA_REDIS_CLUSTER_PORT:-17001}"
CLUSTER_PORTS=("$CLUSTER_PORT" "$((CLUSTER_PORT + 1))" "$((CLUSTER_PORT + 2))")
PG_PORT="${STRATA_POSTGRES_PORT:-15432}"
PG_VERSION="${STRATA_POSTGRES_VERSION:-15}"
PG_BIN="${STRATA_POSTGRES_BIN:-/usr/lib/postgresql/$PG_VERSION/bin}"
PG_DB=strata PG_USER=strata PG_PASSWORD=strata
PG_DIR="$SVC_DIR/postgres"
PG_DATA="$PG_DIR/data"
PG_SOCK="$PG_DIR/run"
PG_LOG="$PG_DIR/postgres.log"

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- helpers ---

# pid_alive PIDFILE PATTERN: the pid in PIDFILE is running and its cmdline matches PATTERN
pid_alive() {
  local f="$1" pat="$2" pid
  [ -s "$f" ] || return 1
  pid="$(head -n1 "$f" | tr -dc 0-9)"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$pat"
}

# running PID: process exists and is not a zombie (zombies linger when pid 1 does not reap)
running() { [ -r "/proc/$1/stat" ] && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]; }

# stop_pidfile PIDFILE PATTERN: TERM (then KILL) the process iff it is still ours
stop_pidfile() {
  local f="$1" pat="$2" pid
  if pid_alive "$f" "$pat"; then
    pid="$(head -n1 "$f" | tr -dc 0-9)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      running "$pid" || break
      sleep 0.1
    done
    if running "$pid"; then
      log "pid $pid ($pat) did not exit on TERM; sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$f"
}

as_pg() {  # run a command as the postgres OS user (postgres refuses to run as root)
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# ---------------------------------------------------------------- install ---

install_packages() {
  local need=()
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null || need+=(redis-server redis-tools)
  [ -x "$PG_BIN/initdb" ] && [ -x "$PG_BIN/pg_ctl" ] || need+=(postgresql "postgresql-$PG_VERSION")
  [ "${#need[@]}" -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing ${need[*]} and no apt-get; install them yourself"
  local sudo=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || die "need root (or sudo) to apt-get install ${need[*]}"
    sudo=(sudo)
  fi
  log "apt-get install ${need[*]}"
  # Keep the packages' own services (redis on 6379, cluster 'main' on 5432) from being
  # auto-started by the maintainer scripts: a policy-rc.d that denies all starts.
  # (Only when no policy-rc.d exists; ours is removed again on every exit path.)
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${sudo[@]}" chmod 755 /usr/sbin/policy-rc.d
    # shellcheck disable=SC2064  # expand sudo now
    trap "${sudo[*]} rm -f /usr/sbin/policy-rc.d" EXIT
  fi
  local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=600)
  if ! "${apt[@]}" install -y --no-install-recommends --no-upgrade "${need[@]}" >"$SVC_DIR/apt.log" 2>&1; then
    log "apt-get install failed; running apt-get update once and retrying"
    "${apt[@]}" update >>"$SVC_DIR/apt.log" 2>&1 || true
    "${apt[@]}" install -y --no-install-recommends --no-upgrade "${need[@]}" >>"$SVC_DIR/apt.log" 2>&1 \
      || die "apt-get install failed, see $SVC_DIR/apt.log"
  fi
  if trap -p EXIT | grep -q policy-rc.d; then "${sudo[@]}" rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
  command -v redis-server >/dev/null || die "redis-server still missing after install"
  [ -x "$PG_BIN/initdb" ] || die "$PG_BIN/initdb still missing after install"
}

# ------------------------------------------------------------------ redis ---

rcli() { redis-cli -h 127.0.0.1 -p "$1" "${@:2}" 2>/dev/null; }
redis_ping() { [ "$(timeout 2 redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ]; }

# start_redis NAME PORT [extra config lines...]
start_redis() {
  local name="$1" port="$2"
  shift 2
  local d="$SVC_DIR/$name"
  mkdir -p "$d"
  {
    echo "port $port"
    echo "bind 127.0.0.1"
    echo "daemonize yes"
    echo "pidfile $d/redis.pid"
    echo "logfile $d/redis.log"
    echo "dir $d"
    echo 'save ""'
    echo "appendonly no"
    echo "protected-mode no"
    local l
    for l in "$@"; do echo "$l"; done
  } >"$d/redis.conf"
  rm -f "$d/redis.pid"
  redis-server "$d/redis.conf" 9>&- || die "redis-server $name failed to start; see $d/redis.log"
}

wait_redis() {  # wait_redis NAME PORT
  for _ in $(seq 1 100); do
    redis_ping "$2" && return 0
    sleep 0.1
  done
  tail -n 20 "$SVC_DIR/$1/redis.log" >&2 || true
  die "redis $1 on port $2 not answering PING"
}

redis_standalone_healthy() {
  pid_alive "$SVC_DIR/redis-$REDIS_PORT/redis.pid" "redis-server.*:$REDIS_PORT " && redis_ping "$REDIS_PORT"
}

up_redis_standalone() {
  if redis_standalone_healthy; then return 0; fi
  stop_pidfile "$SVC_DIR/redis-$REDIS_PORT/redis.pid" "redis-server.*:$REDIS_PORT "
  redis_ping "$REDIS_PORT" && die "port $REDIS_PORT is used by a redis we did not start; set STRATA_REDIS_PORT"
  log "starting redis standalone on $REDIS_PORT"
  STARTED+=(redis)
  start_redis "redis-$REDIS_PORT" "$REDIS_PORT"
  wait_redis "redis-$REDIS_PORT" "$REDIS_PORT"
}

cluster_healthy() {
  local p info
  for p in "${CLUSTER_PORTS[@]}"; do
    pid_alive "$SVC_DIR/cluster-$p/redis.pid" "redis-server.*:$p " || return 1
    info="$(timeout 2 redis-cli -h 127.0.0.1 -p "$p" cluster info 2>/dev/null | tr -d '\r')" || return 1
    grep -q '^cluster_state:ok$' <<<"$info" || return 1
    grep -q '^cluster_known_nodes:3$' <<<"$info" || return 1
    grep -q '^cluster_slots_ok:16384$' <<<"$info" || return 1
  done
}

up_redis_cluster() {
  if cluster_healthy; then return 0; fi
  local p
  # Anything half-up: tear the whole cluster down and build it fresh (takes ~2s).
  for p in "${CLUSTER_PORTS[@]}"; do
    stop_pidfile "$SVC_DIR/cluster-$p/redis.pid" "redis-server.*:$p "
  done
  for p in "${CLUSTER_PORTS[@]}"; do
    redis_ping "$p" && die "port $p is used by a redis we did not start; set STRATA_REDIS_CLUSTER_PORT"
    rm -rf "$SVC_DIR/cluster-$p"
  done
  log "starting redis cluster on ${CLUSTER_PORTS[*]}"
  STARTED+=(cluster)
  for p in "${CLUSTER_PORTS[@]}"; do
    start_redis "cluster-$p" "$p" "cluster-enabled yes" "cluster-config-file nodes.conf" \
      "cluster-node-timeout 5000" "cluster-require-full-coverage yes"
  done
  for p in "${CLUSTER_PORTS[@]}"; do wait_redis "cluster-$p" "$p"; done
  local seeds=()
  for p in "${CLUSTER_PORTS[@]}"; do seeds+=("127.0.0.1:$p"); done
  redis-cli --cluster create "${seeds[@]}" --cluster-replicas 0 --cluster-yes \
    >"$SVC_DIR/cluster-create.log" 2>&1 \
    || { cat "$SVC_DIR/cluster-create.log" >&2; die "redis-cli --cluster create failed"; }
  for _ in $(seq 1 300); do
    cluster_healthy && return 0
    sleep 0.1
  done
  for p in "${CLUSTER_PORTS[@]}"; do rcli "$p" cluster info | head -n 7 >&2 || true; done
  die "redis cluster did not reach cluster_state:ok"
}

# --------------------------------------------------------------- postgres ---

pg_pid_alive() { pid_alive "$PG_DATA/postmaster.pid" "$PG_BIN/postgres"; }
pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 2 2>/dev/null; }
pg_healthy() { [ -f "$PG_DIR/.provisioned" ] && pg_pid_alive && pg_ready; }

pg_prepare_dirs() {
  mkdir -p "$PG_DIR" "$PG_SOCK"
  if [ "$(id -u)" = 0 ]; then
    # the postgres user must be able to traverse into the repo's cache dir
    chmod o+x "$ROOT/.cache" "$SVC_DIR" 2>/dev/null || true
    chown postgres:postgres "$PG_DIR" "$PG_SOCK"
    [ -d "$PG_DATA" ] && chown -R postgres:postgres "$PG_DATA"
    runuser -u postgres -- test -w "$PG_DIR" \
      || die "postgres OS user cannot write $PG_DIR (a parent dir is not traversable?); set STRATA_SERVICES_DIR"
  fi
}

pg_initdb() {
  log "initdb $PG_DATA"
  rm -rf "$PG_DATA" "$PG_DIR/.provisioned"
  local pwfile="$PG_DIR/.pw"
  echo "$PG_PASSWORD" >"$pwfile"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$pwfile"
  as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -E UTF8 --no-locale \
    --auth-local=trust --auth-host=scram-sha-256 --pwfile="$pwfile" >"$PG_DIR/initdb.log" 2>&1 \
    || { cat "$PG_DIR/initdb.log" >&2; die "initdb failed"; }
  rm -f "$pwfile"
  cat >>"$PG_DATA/postgresql.conf" <<EOF

# --- strata hack/services.sh (test only: durability off for speed) ---
listen_addresses = '127.0.0.1'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
shared_buffers = 64MB
log_min_messages = warning
EOF
}

up_postgres() {
  if pg_healthy; then return 0; fi
  pg_prepare_dirs
  if pg_pid_alive; then
    log "postgres running but unhealthy; stopping"
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" stop -m fast -w -t 30 >/dev/null 2>&1 \
      || stop_pidfile "$PG_DATA/postmaster.pid" postgres
  fi
  # stale postmaster.pid (process gone, or pid reused by something else)
  [ -f "$PG_DATA/postmaster.pid" ] && ! pg_pid_alive && rm -f "$PG_DATA/postmaster.pid"
  pg_ready && die "port $PG_PORT is used by a postgres we did not start; set STRATA_POSTGRES_PORT"
  [ -s "$PG_DATA/PG_VERSION" ] || pg_initdb
  log "starting postgres $PG_VERSION on $PG_PORT"
  STARTED+=(postgres)
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 \
    -o "-p $PG_PORT -k $PG_SOCK" start >/dev/null 9>&- \
    || { tail -n 30 "$PG_LOG" >&2 || true; die "pg_ctl start failed; see $PG_LOG"; }
  for _ in $(seq 1 100); do
    pg_ready && break
    sleep 0.1
  done
  pg_ready || die "postgres not ready on $PG_PORT"
  if [ ! -f "$PG_DIR/.provisioned" ]; then
    local psql=("$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCK" -p "$PG_PORT" -U postgres)
    as_pg "${psql[@]}" -d postgres <<EOF
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
    CREATE ROLE $PG_USER LOGIN PASSWORD '$PG_PASSWORD' CREATEDB;
  END IF;
END \$\$;
EOF
    if [ "$(as_pg "${psql[@]}" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$PG_DB'")" != 1 ]; then
      as_pg "${psql[@]}" -d postgres -c "CREATE DATABASE $PG_DB OWNER $PG_USER"
    fi
    touch "$PG_DIR/.provisioned"
  fi
}

down_postgres() {
  if pg_pid_alive; then
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" stop -m fast -w -t 30 >/dev/null 2>&1 \
      || stop_pidfile "$PG_DATA/postmaster.pid" postgres
  fi
}

# ------------------------------------------------------------------- stop ---

down_redis_standalone() { stop_pidfile "$SVC_DIR/redis-$REDIS_PORT/redis.pid" "redis-server.*:$REDIS_PORT "; }

down_redis_cluster() {
  local p
  for p in "${CLUSTER_PORTS[@]}"; do
    stop_pidfile "$SVC_DIR/cluster-$p/redis.pid" "redis-server.*:$p "
  done
}

# down_service redis|cluster|postgres
down_service() {
  case "$1" in
    redis) down_redis_standalone ;;
    cluster) down_redis_cluster ;;
    postgres) [ ! -x "$PG_BIN/pg_ctl" ] || down_postgres ;;
  esac
}

# What this `up` started; its EXIT trap stops them again when `up` fails part-way, so that a failed
# Postgres start leaves no Redis behind (whose ports a later run, e.g. with another
# STRATA_SERVICES_DIR, would refuse as "used by a redis we did not start").
STARTED=()
stop_started_on_failure() {
  local rc=$? name
  [ "$rc" -ne 0 ] && [ "${#STARTED[@]}" -gt 0 ] || return 0
  log "up failed: stopping what it started (${STARTED[*]})"
  for name in "${STARTED[@]}"; do down_service "$name" || true; done
}

# ------------------------------------------------------------------- main ---

print_env() {
  echo "export STRATA_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
  echo "export STRATA_TEST_REDIS_CLUSTER_URL=redis://127.0.0.1:$CLUSTER_PORT/0"
  echo "export STRATA_TEST_POSTGRES_DSN=postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
}

with_lock() {  # serialize concurrent up/down callers (several test runs at once)
  mkdir -p "$SVC_DIR"
  exec 9>"$SVC_DIR/.lock"
  flock -w 900 9 || die "timed out waiting for $SVC_DIR/.lock"
}

cmd="${1:-}"
case "$cmd" in
  up)
    with_lock
    t0=$(date +%s%N)
    install_packages
    trap stop_started_on_failure EXIT
    up_redis_standalone
    up_redis_cluster
    up_postgres
    ms=$((($(date +%s%N) - t0) / 1000000))
    log "ready in $((ms / 1000)).$(printf '%03d' $((ms % 1000)))s; use: eval \"\$(hack/services.sh env)\""
    ;;
  down)
    with_lock
    for name in redis cluster postgres; do down_service "$name"; done
    log "stopped"
    ;;
  env)
    print_env
    ;;
  status)
    rc=0
    if redis_standalone_healthy; then echo "redis      :$REDIS_PORT up"; else echo "redis      :$REDIS_PORT DOWN"; rc=1; fi
    if cluster_healthy; then echo "cluster    :${CLUSTER_PORTS[*]} up"; else echo "cluster    :${CLUSTER_PORTS[*]} DOWN"; rc=1; fi
    if pg_healthy; then echo "postgres   :$PG_PORT up"; else echo "postgres   :$PG_PORT DOWN"; rc=1; fi
    exit "$rc"
    ;;
  *)
    echo "usage: $0 up|down|env|status" >&2
    exit 2
    ;;
esac
