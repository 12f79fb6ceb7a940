#!/usr/bin/env bash
# Celery workers of Dagster's Celery executor (KRYONIX_EXECUTOR=celery), in the background.
#   scripts/workers.sh start [N]   start N workers (default 2): kryonix-w1..N@<host>
#   scripts/workers.sh stop        end exactly the workers this script started (their pid files)
#   scripts/workers.sh status
# Pid files and logs live under the local state folder: $KRYONIX_WORKERS_DIR, default
# $KRYONIX_LOCAL_DIR/workers (`make workers` sets KRYONIX_LOCAL_DIR to .kryonix in the checkout).
# Each worker runs one step at a time (-c 1): a step is a chunk of tenants' sessions, which
# are mostly restic/pg_dump child processes; about one worker per core (see README).
# The workers need the same DAGSTER_HOME (instance) and KRYONIX_* settings as the daemon, except
# the off-site copy's admin path and keys, which are taken out of their environment here.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${KRYONIX_BIN:-$root/.venv/bin}
dir=${KRYONIX_WORKERS_DIR:-${KRYONIX_LOCAL_DIR:-$root/.kryonix}/workers}
queue=${KRYONIX_CELERY_QUEUE:-dagster}
app=kryonix_dagster.workers.app

is_ours() {  # is_ours PID: a live process running our Celery app (a pid file may be stale)
  [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q -- "-A $app worker"
}

start() {
  local n=${1:-2}
  : "${DAGSTER_HOME:?set DAGSTER_HOME: the workers write to the same Dagster instance as the daemon}"
  mkdir -p "$dir"
  "$bin/python" -m kryonix_dagster.workers.broker >/dev/null  # the broker's vhost and user, idempotently
  for i in $(seq "$n"); do
    local name="kryonix-w$i" pidfile="$dir/kryonix-w$i.pid"
    if [ -f "$pidfile" ] && is_ours "$(cat "$pidfile")"; then
      echo "$name already running (pid $(cat "$pidfile"))"; continue
    fi
    rm -f "$pidfile"
    # never the off-site copy's admin path or the endpoint's admin keys, whatever this shell holds
    (cd "$root" && env -u KRYONIX_REPO_SECONDARY_ADMIN -u KRYONIX_REPO_SECONDARY_ADMIN_ACCESS_KEY \
      -u KRYONIX_REPO_SECONDARY_ADMIN_SECRET_KEY -u OFFSITE_S3_ACCESS_KEY -u OFFSITE_S3_SECRET_KEY \
      "$bin/celery" -A "$app" worker --detach -n "$name@%h" -Q "$queue" -c 1 \
      --without-gossip --without-mingle --loglevel INFO \
      --pidfile "$pidfile" --logfile "$dir/$name.log")
    local pid=""
    for _ in $(seq 600); do  # the pid file appears once the daemon has forked and loaded
      pid=$(cat "$pidfile" 2>/dev/null || true)
      [ -n "$pid" ] && is_ours "$pid" && break
      pid=""; sleep 0.1
    done
    [ -n "$pid" ] || { echo "$name did not start within 60 s: see $dir/$name.log" >&2; exit 1; }
    echo "$name started (pid $pid, queue $queue, log $dir/$name.log)"
  done
}

stop() {
  shopt -s nullglob
  local files=("$dir"/kryonix-w*.pid)
  [ ${#files[@]} -gt 0 ] || { echo "no workers started from $dir"; return 0; }
  for pidfile in "${files[@]}"; do
    local pid name
    pid=$(cat "$pidfile"); name=$(basename "$pidfile" .pid)
    if is_ours "$pid"; then
      kill -TERM "$pid"  # warm shutdown: the running step finishes (or is redelivered if it cannot)
      for _ in $(seq 600); do is_ours "$pid" || break; sleep 0.1; done
      if is_ours "$pid"; then echo "$name (pid $pid) still running after 60 s" >&2; continue; fi
      echo "$name stopped (pid $pid)"
    else
      echo "$name was not running (stale pid file)"
    fi
    rm -f "$pidfile"
  done
}

status() {
  shopt -s nullglob
  for pidfile in "$dir"/kryonix-w*.pid; do
    local pid; pid=$(cat "$pidfile")
    if is_ours "$pid"; then echo "$(basename "$pidfile" .pid): running (pid $pid)"; else echo "$(basename "$pidfile" .pid): not running"; fi
  done
}

case "${1:-}" in
  start) start "${2:-${N:-2}}" ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start [N] | stop | status" >&2; exit 2 ;;
esac
