"""The daily digest of the fleet (the seed's monitoring report) to every notification channel:
tenants, stale ones, restore points' ages, storage, the last 24 hours, the last checks and drills.
A sensor that sends once per local day (KRYONIX_SCHEDULE_TIMEZONE), its cursor the day it sent."""
from datetime import datetime
from zoneinfo import ZoneInfo

from dagster import DefaultSensorStatus, SensorEvaluationContext, SkipReason, sensor

from ..engine.alerts import Alert, first_ids, send_logged
from ..progress import human_bytes
from ..resources import AlertsResource, BackupEngineResource
from ..scheduling import TIMEZONE, default_schedule_status


def digest_alert(status: dict, day: str) -> Alert:
    tenants = status["tenants"]
    active = [t for t in tenants if t["status"] == "ativo"]
    aged = sorted((t for t in active if t["age_hours"] is not None), key=lambda t: t["age_hours"])
    never = [t["id"] for t in active if t["age_hours"] is None]
    failed_attempt = [t["id"] for t in active if t["last_attempt_ok"] is False]
    check_failed = [t["id"] for t in tenants if t["last_check_ok"] is False]
    drill_failed = [t["id"] for t in tenants if t["last_drill_ok"] is False]
    unchecked = sum(1 for t in active if t["last_check_at"] is None)
    last = status["last_24h"]
    lines = [
        f"{len(tenants)} tenant(s), {len(active)} active; {len(status['stale'])} stale"
        + (f": {first_ids(status['stale'])}" if status["stale"] else ""),
        "Restore points' ages: " + (f"newest {aged[0]['age_hours']:.1f} h ({aged[0]['id']}), oldest "
                                    f"{aged[-1]['age_hours']:.1f} h ({aged[-1]['id']})" if aged else "none yet")
        + (f"; never backed up: {len(never)} ({first_ids(never)})" if never else ""),
        f"Storage: {human_bytes(status['storage_bytes'])} in the repositories",
        f"Last 24 h: {last['sessions']} session(s), {last['tenants']} tenant(s) backed up, "
        f"{human_bytes(last['bytes'])} added",
        f"Last checks: integrity failed {len(check_failed)}" + (f" ({first_ids(check_failed)})" if check_failed else "")
        + f", drills failed {len(drill_failed)}" + (f" ({first_ids(drill_failed)})" if drill_failed else "")
        + f", never checked {unchecked}",
    ]
    if failed_attempt:
        lines.append(f"Last backup attempt failed: {len(failed_attempt)} ({first_ids(failed_attempt)})")
    if status.get("offsite_lagging"):
        lines.append(f"Off-site copy lagging: {len(status['offsite_lagging'])} ({first_ids(status['offsite_lagging'])})")
    return Alert("digest", f"kryonix-backup daily digest {day}: {len(tenants)} tenant(s), {len(status['stale'])} stale",
                 "\n".join(lines), fields={"day": day})


@sensor(name="fleet_digest_sensor", minimum_interval_seconds=1800,
        # a daily report, so it starts with the schedules (KRYONIX_SCHEDULES_RUNNING=false: stopped)
        default_status=DefaultSensorStatus[default_schedule_status().name],
        description="Once a day: the fleet's digest (tenants, stale, ages, storage, last 24 h, last checks) to every "
                    "KRYONIX_NOTIFY_URLS channel.")
def fleet_digest_sensor(context: SensorEvaluationContext, engine: BackupEngineResource, alerts: AlertsResource):
    day = datetime.now(ZoneInfo(TIMEZONE)).date().isoformat()
    if context.cursor == day:
        return SkipReason(f"today's digest ({day}) already sent")
    alert = digest_alert(engine.fleet_status(), day)
    if alerts.configured() and not send_logged(context.log, alerts, alert):
        return SkipReason(f"digest not delivered (every channel failed), retried next tick: {alert.title}")
    if not alerts.configured():
        send_logged(context.log, alerts, alert)  # logs that no channel is configured, with the text
    context.update_cursor(day)
    return SkipReason(f"digest {'sent' if alerts.configured() else 'logged (no channel configured)'}: {alert.title}")
