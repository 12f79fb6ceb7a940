"""A scheduled backup batch's one summary (the CLI's `backup --all|ID…` sends its own): total,
succeeded, failed, success rate and each failed tenant's reason, read from the run's event log —
the split step's chunks (workers/io.py keeps them there) and the chunk steps' failures (their
`failed_tenants`, batching.finish_batch). Sent by the failed-run sensor when the batch failed, and
by this sensor when it succeeded and KRYONIX_NOTIFY_SUCCESS=true."""
from dagster import (DagsterEventType, DagsterRunStatus, DefaultSensorStatus, RunStatusSensorContext, SkipReason,
                     run_status_sensor)

from ..backup.jobs import backup_batch_job
from ..engine.alerts import Alert, batch_summary_alert, notify_success, send_logged
from ..engine.errors import one_line
from ..resources import AlertsResource
from ..workers.io import MAPPING_KEY, VALUE_KEY

BATCH_JOB = "backup_batch_job"
SPLIT_STEP, CHUNK_STEP = "split_active_tenants", "backup_chunk"


def batch_tally(instance, run_id: str) -> tuple[list[str], dict[str, str]]:
    """(the batch's tenants, the failed ones with their reasons) from the run's events."""
    def records(kind):
        return [r.event_log_entry.dagster_event
                for r in instance.get_records_for_run(run_id, of_type=kind, limit=100_000).records]

    chunks: dict[str, list[str]] = {}
    for event in records(DagsterEventType.HANDLED_OUTPUT):
        meta = event.event_specific_data.metadata
        if event.step_key == SPLIT_STEP and VALUE_KEY in meta:
            chunks[meta[MAPPING_KEY].value] = list(meta[VALUE_KEY].value["tenants"])
    succeeded = {e.step_key for e in records(DagsterEventType.STEP_SUCCESS)}
    failures = {e.step_key: e.event_specific_data for e in records(DagsterEventType.STEP_FAILURE)}
    tenants: list[str] = []
    failed: dict[str, str] = {}
    for mapping_key, chunk in sorted(chunks.items()):
        tenants += chunk
        step = f"{CHUNK_STEP}[{mapping_key}]"
        if step in succeeded:
            continue
        data = failures.get(step)
        user = getattr(data, "user_failure_data", None)
        listed = {k: v.value for k, v in ((user.metadata or {}) if user else {}).items()}.get("failed_tenants")
        if listed:
            failed.update({t: one_line(str(reason), 300) for t, reason in listed.items()})
        else:  # the step died as a whole (or never ran): none of its tenants is known to be backed up
            error = data.error.message if data is not None and data.error is not None else "the chunk step did not finish"
            failed.update({t: f"not backed up: {one_line(error, 200)}" for t in chunk})
    return tenants, failed


def batch_alert(instance, run) -> Alert:
    tenants, failed = batch_tally(instance, run.run_id)
    config = ((run.run_config or {}).get("ops", {}).get(SPLIT_STEP) or {}).get("config") or {}
    plan = run.tags.get("kryonix/plan")
    return batch_summary_alert(f"{config.get('backup_type', 'incremental')} backup", len(tenants), failed,
                               f"run {run.run_id[:8]} of {run.job_name}" + (f", plan {plan}" if plan else ""))


@run_status_sensor(run_status=DagsterRunStatus.SUCCESS, monitored_jobs=[backup_batch_job],
                   name="backup_batch_success_sensor",
                   # only worth running when it may send (an operator can still start it in the UI)
                   default_status=DefaultSensorStatus.RUNNING if notify_success() else DefaultSensorStatus.STOPPED,
                   description="A backup batch that succeeded: its summary, with KRYONIX_NOTIFY_SUCCESS=true "
                               "(failed batches: failed_runs_sensor).")
def backup_batch_success_sensor(context: RunStatusSensorContext, alerts: AlertsResource):
    if not alerts.notify_success():
        return SkipReason("KRYONIX_NOTIFY_SUCCESS is not true: a batch that succeeded sends no summary")
    summary = batch_alert(context.instance, context.dagster_run)
    if not summary.fields["total"]:
        return SkipReason("the batch had no tenants")
    send_logged(context.log, alerts, summary)
