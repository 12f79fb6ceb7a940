#!/usr/bin/env bash
# Screenshot of the asset graph in the Dagster UI, rendered by headless Chromium.
# Usage: scripts/screenshot.sh OUTPUT.png   (uses the same local defaults as `make dev`)
set -euo pipefail
out=${1:-docs/asset-graph.png}
command -v chromium >/dev/null || { echo "chromium is not installed (apt-get install chromium)" >&2; exit 1; }
.venv/bin/python -c "import playwright" 2>/dev/null || .venv/bin/pip install -q playwright
port=${KRYONIX_SCREENSHOT_PORT:-3917}
logs=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$logs"' EXIT
# the demo's instance (DAGSTER_HOME, as `make` sets it) shows the tenants' partitions
home=${DAGSTER_HOME:-$logs}
mkdir -p "$home"
DAGSTER_HOME=$home .venv/bin/dagster-webserver -w workspace.yaml -h 127.0.0.1 -p "$port" >"$logs/webserver.log" 2>&1 &
server=$!
for _ in $(seq 90); do curl -sf "http://127.0.0.1:$port/server_info" >/dev/null && break; sleep 1; done
url="http://127.0.0.1:$port/locations/kryonix_dagster.definitions/asset-groups/tenant_backups"
.venv/bin/python scripts/screenshot.py "$url" "$out"
echo "wrote $out ($url)"
