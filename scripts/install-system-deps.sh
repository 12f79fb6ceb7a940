#!/usr/bin/env bash
# Install the battle-tested tools from Debian when missing: restic, pgBackRest, PostgreSQL client, rclone.
set -euo pipefail
missing=()
command -v restic >/dev/null || missing+=(restic)
command -v pgbackrest >/dev/null || missing+=(pgbackrest)
command -v pg_dump >/dev/null || missing+=(postgresql-client)
command -v psql >/dev/null || missing+=(postgresql-client)
command -v rclone >/dev/null || missing+=(rclone)  # the off-site copy's append-only endpoint
command -v curl >/dev/null || missing+=(curl)
command -v socat >/dev/null || missing+=(socat)  # tests: TLS in front of moto_server for an S3 pgBackRest repository
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing tools: ${missing[*]}; run as root or: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing from Debian: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
