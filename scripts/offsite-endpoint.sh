#!/usr/bin/env bash
# The off-site copy's append-only endpoint: `rclone serve restic --append-only` on loopback in
# front of a folder (default) or an S3 bucket (OFFSITE_S3_ENDPOINT set). Workers write through
# it (KRYONIX_REPO_SECONDARY=rest:http://127.0.0.1:PORT) and can never delete or overwrite;
# retention goes through the admin path (KRYONIX_REPO_SECONDARY_ADMIN: the folder or bucket itself).
#   scripts/offsite-endpoint.sh start|stop|status
# Environment: OFFSITE_DIR (folder; default $KRYONIX_LOCAL_DIR/offsite), OFFSITE_PORT (8765),
# OFFSITE_STATE (pid and log; default $KRYONIX_LOCAL_DIR/state), for S3: OFFSITE_S3_ENDPOINT,
# OFFSITE_S3_BUCKET, OFFSITE_S3_ACCESS_KEY, OFFSITE_S3_SECRET_KEY.
set -euo pipefail
local_dir=${KRYONIX_LOCAL_DIR:-$PWD/.kryonix}
dir=${OFFSITE_DIR:-$local_dir/offsite}
port=${OFFSITE_PORT:-8765}
state=${OFFSITE_STATE:-$local_dir/state}
pidfile=$state/offsite-endpoint.pid
logfile=$state/offsite-endpoint.log
mkdir -p "$state"

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

case "${1:-start}" in
  start)
    if running; then echo "off-site endpoint already running (pid $(cat "$pidfile"))"; exit 0; fi
    command -v rclone >/dev/null || { echo "rclone is missing: apt-get install -y rclone" >&2; exit 1; }
    if [ -n "${OFFSITE_S3_ENDPOINT:-}" ]; then
      # credentials through rclone's environment, never on its command line (visible in ps)
      export RCLONE_S3_PROVIDER=Other RCLONE_S3_ENV_AUTH=false RCLONE_S3_ENDPOINT="$OFFSITE_S3_ENDPOINT" \
        RCLONE_S3_ACCESS_KEY_ID="$OFFSITE_S3_ACCESS_KEY" RCLONE_S3_SECRET_ACCESS_KEY="$OFFSITE_S3_SECRET_KEY"
      target=":s3:${OFFSITE_S3_BUCKET}"
    else
      mkdir -p "$dir"; target=$dir
    fi
    # rclone honours AWS_CA_BUNDLE and then fails on a plain-http endpoint (FACTS.md)
    env -u AWS_CA_BUNDLE rclone serve restic --append-only --addr "127.0.0.1:$port" "$target" >"$logfile" 2>&1 &
    echo $! >"$pidfile"
    for _ in $(seq 50); do
      if curl -s -o /dev/null "http://127.0.0.1:$port/"; then
        echo "off-site endpoint: rest:http://127.0.0.1:$port (append-only) in front of ${OFFSITE_S3_ENDPOINT:+s3 }${OFFSITE_S3_BUCKET:-$dir}"
        exit 0
      fi
      running || break
      sleep 0.2
    done
    echo "off-site endpoint did not start; see $logfile" >&2; exit 1 ;;
  stop)
    if running; then kill "$(cat "$pidfile")"; fi
    rm -f "$pidfile" ;;
  status)
    if running; then echo "running (pid $(cat "$pidfile"), port $port)"; else echo "stopped"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
