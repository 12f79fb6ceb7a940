"""CLI sessions show up in the Dagster UI: when DAGSTER_HOME is set, each session is
reported to that instance as materializations of the tenant's partition."""
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
        from .session_events import partition_events

        with DagsterInstance.get() as instance:
            if not instance.has_dynamic_partition(KRYONIX_TENANTS, result.tenant_id):
                instance.add_dynamic_partitions(KRYONIX_TENANTS, [result.tenant_id])
            tags = {"kryonix/source": "cli", "kryonix/session": result.session_id}
            for event in partition_events(result, tags):
                instance.report_runless_asset_event(event)
        return True
    except Exception as exc:
        log.warning("session %s not reported to Dagster: %s", result.session_id, exc)
        return False
