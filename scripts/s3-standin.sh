#!/usr/bin/env bash
# A loopback S3 stand-in (moto_server) for local demos when KRYONIX_S3_ENDPOINT points at it.
# Its data lives in memory: stopping it forgets the tenants' buckets (re-run `make demo`).
set -euo pipefail
endpoint=${KRYONIX_S3_ENDPOINT:?}
port=${endpoint##*:}; port=${port%%/*}
state=${KRYONIX_LOCAL_DIR:-.kryonix}
mkdir -p "$state"
if curl -s -o /dev/null "$endpoint" 2>/dev/null; then exit 0; fi
echo "starting the loopback S3 stand-in (moto_server) on 127.0.0.1:$port" >&2
nohup .venv/bin/moto_server -H 127.0.0.1 -p "$port" >"$state/moto_server.log" 2>&1 &
echo $! >"$state/moto_server.pid"
for _ in $(seq 30); do curl -s -o /dev/null "$endpoint" && exit 0; sleep 0.5; done
echo "moto_server did not start; see $state/moto_server.log" >&2
exit 1
