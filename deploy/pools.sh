#!/usr/bin/env bash
# Per-pool limits of the production instance (stored in its database; run once, or after
# changing a limit). Each backup tier takes a slot of its service's pool.
set -euo pipefail
: "${DAGSTER_HOME:?set DAGSTER_HOME to the folder holding deploy/dagster.yaml}"
dagster=${DAGSTER:-dagster}
set_limit() { "$dagster" instance concurrency set "$1" "$2"; }
set_limit postgres "${KRYONIX_POOL_POSTGRES:-4}"
set_limit s3 "${KRYONIX_POOL_S3:-6}"
set_limit redis "${KRYONIX_POOL_REDIS:-6}"
set_limit rabbitmq "${KRYONIX_POOL_RABBITMQ:-4}"
set_limit kryonix_sessions "${KRYONIX_POOL_SESSIONS:-8}"
set_limit kryonix_repository "${KRYONIX_POOL_REPOSITORY:-2}"
set_limit kryonix_drills "${KRYONIX_POOL_DRILLS:-1}"
