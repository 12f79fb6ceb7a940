"""CLI sessions show up in the Dagster UI: when DAGSTER_HOME is set, each session is
reported to that instance as a small run of its own (`cli_backup_session`) that logs the
tier materializations, the restore point and its consistency check for the tenant's
partition.

A run rather than runless events: Dagster 1.13 stores a runless check evaluation under the
run id "" and a UNIQUE index on (asset, check, run id, partition) then refuses the second
evaluation of the same tenant; inside a run of its own every session's check is kept.
"""
from __future__ import annotations

import logging
import os

from .engine.session import SessionResult

log = logging.getLogger(__name__)

def report_session(result: SessionResult) -> bool:
    """True when reported; a Dagster problem never fails the backup that already happened."""
    if not os.environ.get("DAGSTER_HOME") or not result.restore_point:
        return False
    try:
        from dagster import DagsterInstance

        from .partitions import KRYONIX_TENANTS
        from .backup.events import session_report_job

        with DagsterInstance.get() as instance:
            if not instance.has_dynamic_partition(KRYONIX_TENANTS, result.tenant_id):
                instance.add_dynamic_partitions(KRYONIX_TENANTS, [result.tenant_id])
            run = session_report_job(result).execute_in_process(
                instance=instance, raise_on_error=False,
                tags={"kryonix/source": "cli", "kryonix/session": result.session_id, "kryonix/tenant": result.tenant_id},
                run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
            )
            if not run.success:
                log.warning("session %s not reported to Dagster: run %s failed", result.session_id, run.run_id)
            return run.success
    except Exception as exc:  # noqa: BLE001 - reporting is best effort, the backup already happened
        from .engine.errors import one_line

        log.warning("session %s not reported to Dagster: %s", result.session_id, one_line(str(exc), 300))
        return False

