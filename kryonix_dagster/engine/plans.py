"""The plans, declared in one table: retention (restic GFS counts), cadence and RPO.

Retention follows the seed: basic 7/4/3/0, pro 30/12/12/2, enterprise 60/24/24/5
(daily/weekly/monthly/yearly), plus every session of the last 48 hours and the newest
one. Cadence follows the seed (incrementals every 6 h, a full session at 02:00, retention at
04:00); enterprise tenants get incrementals every 3 h. The repository check runs at 06:30,
not the seed's 06:00: `restic check` holds the tenant's lease (its exclusive lock must not
meet a session), and 06:00 is an incremental's hour on every plan. It reads a rotating
seventh of the data daily, so the whole repository is read every week. Restore drills run
weekly (daily for enterprise). An unknown plan falls back to basic's cadence, with a
warning; `forget` refuses it (retention.retention_plan).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    name: str
    keep_daily: int
    keep_weekly: int
    keep_monthly: int
    keep_yearly: int
    incremental_cron: str
    full_cron: str
    integrity_cron: str
    drill_cron: str
    rpo_hours: float
    keep_within: str = "48h"
    pitr_days: int = 0  # point-in-time recovery promise (pgBackRest's retention follows the longest)
    offsite_lag_hours: float = 24  # the newest restore point is in the off-site copy within this

    def forget_args(self) -> list[str]:
        """restic forget flags for this plan's restore points."""
        args = ["--keep-last", "1", "--keep-within", self.keep_within]
        for flag, value in (("--keep-daily", self.keep_daily), ("--keep-weekly", self.keep_weekly),
                            ("--keep-monthly", self.keep_monthly), ("--keep-yearly", self.keep_yearly)):
            if value:
                args += [flag, str(value)]
        return args


PLANS: dict[str, Plan] = {
    "basic": Plan("basic", 7, 4, 3, 0, "0 */6 * * *", "0 2 * * *", "30 6 * * *", "0 5 * * 0", rpo_hours=8,
                   pitr_days=0, offsite_lag_hours=24),
    "pro": Plan("pro", 30, 12, 12, 2, "0 */6 * * *", "0 2 * * *", "30 6 * * *", "0 5 * * 0", rpo_hours=8,
                 pitr_days=7, offsite_lag_hours=12),
    "enterprise": Plan("enterprise", 60, 24, 24, 5, "0 */3 * * *", "0 2 * * *", "30 6 * * *", "0 5 * * *", rpo_hours=4,
                        pitr_days=30, offsite_lag_hours=6),
}
# pgBackRest base backups of the tenants' cluster: full weekly (Sunday), differential the other days.
PITR_FULL_CRON = "0 1 * * 0"
PITR_DIFF_CRON = "0 1 * * 1-6"
# seed: retention daily at 04:00. At 100,000 tenants one tick would request thousands of runs,
# so each tenant gets one hour of 04:00-07:00 by a hash of its id (retention_hour): a quarter
# of the fleet per tick, the same hour every day.
RETENTION_HOURS = (4, 5, 6, 7)
RETENTION_CRON = "0 4-7 * * *"


def retention_hour(tenant_id: str) -> int:
    """The tenant's retention hour (local time of the schedules), stable across days and hosts."""
    digest = hashlib.sha256(tenant_id.encode()).digest()
    return RETENTION_HOURS[int.from_bytes(digest[:4], "big") % len(RETENTION_HOURS)]


# The compliance tier has no legal period of its own on top of the plan (it used to keep one
# snapshot a month for five years, so a processing log deleted after its 5 years lived on ~10
# years in backups): the live database keeps rows for their period; see engine/retention.py.


def plan_for(name: str | None) -> tuple[Plan, str | None]:
    """(plan, warning): an unknown plan falls back to basic and says so."""
    if name in PLANS:
        return PLANS[name], None
    warning = f"unknown plan {name!r}: using basic retention and cadence"
    log.warning(warning)
    return PLANS["basic"], warning
