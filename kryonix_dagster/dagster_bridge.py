"""What the CLI does shows up in the Dagster UI: when DAGSTER_HOME is set, a backup session, a
`copy` and a `pitr backup` are each reported to that instance as a small run of their own that
logs the materializations and check evaluations the matching asset would have (the tier assets,
the restore point and its session checks; `offsite_copy` and its `offsite_lag` check per tenant;
`pitr_base_backup` and its two checks), on the tenants' partitions.

A run rather than runless events: Dagster 1.13 stores a runless check evaluation under the
run id "" and a UNIQUE index on (asset, check, run id, partition) then refuses the second
evaluation of the same tenant; inside a run of its own every evaluation is kept.
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from typing import Iterable

from .engine.errors import one_line
from .engine.session import SessionResult

log = logging.getLogger(__name__)

CLI_SESSION_JOB = "cli_backup_session"
CLI_COPY_JOB = "cli_offsite_copy"
CLI_PITR_JOB = "cli_pitr_backup"


@contextlib.contextmanager
def _quiet_previews():
    """Importing the Dagster layer's partitioned checks warns of a preview feature (FACTS.md): not
    something the CLI's operator needs on every copy."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Specifying a partitions_def")
        yield


def _events_job(name: str, description: str, events: list):
    from dagster import job, op

    @op(name=f"report_{name}", description=description)
    def report(context):  # no annotation: Dagster resolves it at run time, outside this module's scope
        for event in events:
            context.log_event(event)

    @job(name=name, description=description)
    def reported():
        report()

    return reported


def _report(name: str, description: str, what: str, events: list, tenants: Iterable[str], tags: dict) -> bool:
    """True when reported; a Dagster problem never fails the operation that already happened."""
    if not os.environ.get("DAGSTER_HOME") or not events:
        return False
    try:
        from dagster import DagsterInstance

        from .partitions import KRYONIX_TENANTS

        with DagsterInstance.get() as instance:
            missing = [t for t in dict.fromkeys(tenants) if not instance.has_dynamic_partition(KRYONIX_TENANTS, t)]
            if missing:
                instance.add_dynamic_partitions(KRYONIX_TENANTS, missing)
            run = _events_job(name, description, events).execute_in_process(
                instance=instance, raise_on_error=False, tags={"kryonix/source": "cli", **tags},
                run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
            )
            if not run.success:
                log.warning("%s not reported to Dagster: run %s failed", what, run.run_id)
            return run.success
    except Exception as exc:  # noqa: BLE001 - reporting is best effort, the operation already happened
        log.warning("%s not reported to Dagster: %s", what, one_line(str(exc), 300))
        return False


def report_session(result: SessionResult) -> bool:
    if not result.restore_point:
        return False
    from .backup.events import partition_events

    tags = {"kryonix/source": "cli", "kryonix/session": result.session_id}
    return _report(CLI_SESSION_JOB, "A backup session the kryonix-backup CLI ran, as Dagster events.",
                   f"session {result.session_id}", list(partition_events(result, tags)), [result.tenant_id],
                   {"kryonix/session": result.session_id, "kryonix/tenant": result.tenant_id})


def report_copies(settings, results: list) -> bool:
    """`copy`: each tenant's `offsite_copy` materialization and its `offsite_lag` evaluation."""
    if not results or not os.environ.get("DAGSTER_HOME"):
        return False
    from dagster import AssetCheckEvaluation, AssetKey, AssetMaterialization

    from .engine.offsite import offsite_lags

    with _quiet_previews():
        from .offsite.assets import OFFSITE_COPY_ASSET, copy_metadata, lag_evaluation

    events = []
    for result in results:
        lags = offsite_lags(settings, result.tenant_id)
        events += [AssetMaterialization(asset_key=OFFSITE_COPY_ASSET, partition=result.tenant_id,
                                        metadata=copy_metadata(result), tags={"kryonix/source": "cli"}),
                   AssetCheckEvaluation(asset_key=AssetKey(OFFSITE_COPY_ASSET), check_name="offsite_lag",
                                        partition=result.tenant_id, **lag_evaluation(lags[0] if lags else None))]
    return _report(CLI_COPY_JOB, "An off-site copy the kryonix-backup CLI ran, as Dagster events.",
                   "copy", events, [r.tenant_id for r in results], {})


def report_pitr_backup(backup, state) -> bool:
    """`pitr backup`: the `pitr_base_backup` materialization and its two checks' evaluations."""
    if not os.environ.get("DAGSTER_HOME"):
        return False
    from dagster import AssetCheckEvaluation, AssetKey, AssetMaterialization

    with _quiet_previews():
        from .pitr.assets import PITR_ASSET, archiving_evaluation, backup_metadata, window_evaluation

    events = [AssetMaterialization(asset_key=PITR_ASSET, metadata=backup_metadata(backup, state),
                                   tags={"kryonix/source": "cli"}),
              AssetCheckEvaluation(asset_key=AssetKey(PITR_ASSET), check_name="wal_archiving",
                                   **archiving_evaluation(state)),
              AssetCheckEvaluation(asset_key=AssetKey(PITR_ASSET), check_name="window_covers_plans",
                                   **window_evaluation(state))]
    return _report(CLI_PITR_JOB, "A pgBackRest base backup the kryonix-backup CLI ran, as Dagster events.",
                   f"pitr backup {backup.label}", events, [], {"kryonix/pitr_backup": backup.label})
