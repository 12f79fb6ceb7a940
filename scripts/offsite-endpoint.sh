#!/usr/bin/env bash
# The off-site copy's append-only endpoint: `rclone serve restic --append-only --htpasswd` on
# loopback in front of a folder (default) or an S3 bucket (OFFSITE_S3_ENDPOINT set). Workers write
# through it with a client user and password (KRYONIX_REPO_SECONDARY=rest:http://USER:PASSWORD@
# 127.0.0.1:PORT) and can never delete or overwrite; retention goes through the admin path
# (KRYONIX_REPO_SECONDARY_ADMIN: the folder or bucket itself), which workers are never given.
#   scripts/offsite-endpoint.sh start|stop|status
# Run as root, the endpoint runs as its own system user (OFFSITE_USER, default kryonix-offsite,
# created here: no login shell, no home of its own) that owns, mode 0700, the state folder
# (htpasswd, rclone.conf holding the bucket's admin keys, pid, log) and the folder backend; rclone
# starts with an empty environment, so neither its command line nor /proc/PID/environ holds a
# secret, and the workers' user can read neither its files nor its process.
# Environment: OFFSITE_DIR (folder; default $KRYONIX_LOCAL_DIR/offsite), OFFSITE_PORT (8765),
# OFFSITE_STATE (default $KRYONIX_LOCAL_DIR/state), OFFSITE_USER, OFFSITE_CLIENT_USER
# (kryonix-worker) and OFFSITE_CLIENT_FILE (the client password, URL-safe; default
# $OFFSITE_STATE.client; generated when missing; 0600, the invoking user's: give its content to
# the workers), for S3: OFFSITE_S3_ENDPOINT, OFFSITE_S3_BUCKET, OFFSITE_S3_ACCESS_KEY,
# OFFSITE_S3_SECRET_KEY (read at start only, written to rclone.conf).
set -euo pipefail
umask 077
local_dir=${KRYONIX_LOCAL_DIR:-$PWD/.kryonix}
dir=${OFFSITE_DIR:-$local_dir/offsite}
port=${OFFSITE_PORT:-8765}
state=${OFFSITE_STATE:-$local_dir/state}
run_as=${OFFSITE_USER:-kryonix-offsite}
client_user=${OFFSITE_CLIENT_USER:-kryonix-worker}
client_file=${OFFSITE_CLIENT_FILE:-$state.client}
pidfile=$state/offsite-endpoint.pid
logfile=$state/offsite-endpoint.log

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

system_user() {  # the endpoint's own user, created once (several starts may race: re-check)
  for _ in 1 2 3 4 5; do
    id -u "$run_as" >/dev/null 2>&1 && return 0
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
      --user-group "$run_as" 2>/dev/null || sleep 0.5
  done
  id -u "$run_as" >/dev/null
}

htpasswd_line() {  # USER:hash of the client password (bcrypt; apr1 where Python has no crypt module)
  local password; password=$(tr -d '\n' <"$client_file")  # never on a command line
  python3 -W ignore -c 'import crypt, sys
print(sys.argv[1] + ":" + crypt.crypt(sys.stdin.read().rstrip("\n"), crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 10)))' \
    "$1" <<<"$password" 2>/dev/null || echo "$1:$(openssl passwd -apr1 -stdin <<<"$password")"
}

case "${1:-start}" in
  start)
    if running; then echo "off-site endpoint already running (pid $(cat "$pidfile"))"; exit 0; fi
    command -v rclone >/dev/null || { echo "rclone is missing: apt-get install -y rclone" >&2; exit 1; }
    if curl -s -o /dev/null "http://127.0.0.1:$port/"; then  # else the wait below would take it for ours
      echo "port $port already answers (another endpoint, e.g. one started by an older version of this script: stop it)" >&2
      exit 1
    fi
    (umask 022; mkdir -p "$state")  # parents it creates stay traversable for the endpoint's user
    if [ ! -s "$client_file" ]; then
      mkdir -p "$(dirname "$client_file")"
      python3 -c 'import secrets; print(secrets.token_hex(24))' >"$client_file"
    fi
    chmod 600 "$client_file"
    htpasswd_line "$client_user" >"$state/htpasswd.new"
    mv "$state/htpasswd.new" "$state/htpasswd"
    if [ -n "${OFFSITE_S3_ENDPOINT:-}" ]; then
      # the bucket's admin keys live only in this file (0600, the endpoint's user)
      printf '[offsite]\ntype = s3\nprovider = Other\nenv_auth = false\nendpoint = %s\naccess_key_id = %s\nsecret_access_key = %s\n' \
        "$OFFSITE_S3_ENDPOINT" "$OFFSITE_S3_ACCESS_KEY" "$OFFSITE_S3_SECRET_KEY" >"$state/rclone.conf"
      target="offsite:${OFFSITE_S3_BUCKET}"
    else
      : >"$state/rclone.conf"
      (umask 022; mkdir -p "$dir"); target=$dir
    fi
    as_user=()
    if [ "$(id -u)" = 0 ]; then
      system_user
      chown -R "$run_as:$(id -g "$run_as")" "$state"
      [ -n "${OFFSITE_S3_ENDPOINT:-}" ] || chown -R "$run_as:$(id -g "$run_as")" "$dir"
      chmod 700 "$state"
      # the folder: the endpoint's user and group only; setgid and a group-readable umask, so files the
      # admin path writes as root (restic keeps a repository's group access) stay readable by the endpoint
      [ -n "${OFFSITE_S3_ENDPOINT:-}" ] || chmod 2750 "$dir"
      # it must reach its folders: a parent only root can traverse (e.g. /root, 0700) stops it
      if ! setpriv --reuid="$run_as" --regid="$(id -g "$run_as")" --clear-groups test -w "$state"; then
        echo "the endpoint's user $run_as cannot reach $state: put OFFSITE_STATE/OFFSITE_DIR outside folders only root can enter (e.g. under /var/lib)" >&2
        exit 1
      fi
      as_user=(setpriv --reuid="$run_as" --regid="$(id -g "$run_as")" --clear-groups)
    else
      echo "not root: the endpoint runs as $(id -un); give the workers another user" >&2
    fi
    # an empty environment: nothing of this shell (OFFSITE_S3_SECRET_KEY, AWS_CA_BUNDLE, which makes
    # rclone fail on plain http: FACTS.md) reaches rclone; setpriv execs, so $! is rclone itself
    umask 027
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/nonexistent "${as_user[@]}" \
      rclone serve restic --append-only --htpasswd "$state/htpasswd" --config "$state/rclone.conf" \
      --addr "127.0.0.1:$port" "$target" >"$logfile" 2>&1 &
    echo $! >"$pidfile"
    for _ in $(seq 50); do
      if running && curl -s -o /dev/null "http://127.0.0.1:$port/"; then
        echo "off-site endpoint: rest:http://$client_user:***@127.0.0.1:$port (append-only, as $(ps -o user= -p "$(cat "$pidfile")")) in front of ${OFFSITE_S3_ENDPOINT:+s3 }${OFFSITE_S3_BUCKET:-$dir}; client password in $client_file"
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
