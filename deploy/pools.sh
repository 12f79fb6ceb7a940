#!/usr/bin/env bash
# Per-pool limits of the production instance (stored in its database; run once, or after
# changing a limit). Each backup tier takes a slot of its service's pool; sessions, repository
# checks and drills have pools of their own. Same effect as `dagster instance concurrency set`
# for each pool, in one process.
set -euo pipefail
: "${DAGSTER_HOME:?set DAGSTER_HOME to the folder holding deploy/dagster.yaml}"
python=${PYTHON:-python3}
"$python" - <<PY
from dagster import DagsterInstance

from kryonix_dagster.dagster_private import ConcurrencySlots

limits = {
    "postgres": ${KRYONIX_POOL_POSTGRES:-4},
    "s3": ${KRYONIX_POOL_S3:-6},
    "redis": ${KRYONIX_POOL_REDIS:-6},
    "rabbitmq": ${KRYONIX_POOL_RABBITMQ:-4},
    "kryonix_sessions": ${KRYONIX_POOL_SESSIONS:-8},
    "kryonix_repository": ${KRYONIX_POOL_REPOSITORY:-2},
    "kryonix_drills": ${KRYONIX_POOL_DRILLS:-1},
    "kryonix_offsite": ${KRYONIX_POOL_OFFSITE:-2},
}
with DagsterInstance.get() as instance:
    slots = ConcurrencySlots.of(instance)
    for pool, limit in limits.items():
        slots.set_limit(pool, int(limit))
        print(f"pool {pool}: {limit}")
PY
