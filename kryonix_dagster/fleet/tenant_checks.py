"""Every check of one tenant in one run (retention, freshness, integrity, restore drill), and
`main()`: that run for every active tenant with a restore point, recorded in the instance
DAGSTER_HOME names (what `make demo` calls, so the operator's first look at the UI shows every
check with a result)."""
from __future__ import annotations

import sys

from dagster import AssetSelection, DagsterInstance, define_asset_job

from ..drills.checks import restore_drill_check
from ..integrity.checks import integrity_check
from ..retention.checks import retention_check
from .freshness import freshness_check

TENANT_CHECKS = [retention_check, freshness_check, integrity_check, restore_drill_check]

# A checks-only job carries no partitions definition in Dagster 1.13: launch it with the tag
# dagster/partition=<tenant> (or use the batch jobs, which take a list of tenants).
tenant_checks_job = define_asset_job(
    "tenant_checks_job",
    selection=AssetSelection.checks(*TENANT_CHECKS),
    description="Retention, freshness, integrity and restore-drill checks of one tenant "
                "(launch with the tag dagster/partition=<tenant id>).",
)


# The run's own log stays in the instance (the UI shows it); the terminal gets warnings only.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def check_tenants_once(instance: DagsterInstance, tenant_ids: list[str]) -> dict[str, bool]:
    """Run tenant_checks_job once per tenant on `instance`: {tenant: every check passed}."""
    from ..definitions import defs
    from ..partitions import KRYONIX_TENANTS

    job_def = defs.resolve_job_def(tenant_checks_job.name)
    outcome = {}
    for tenant_id in tenant_ids:
        if not instance.has_dynamic_partition(KRYONIX_TENANTS, tenant_id):
            instance.add_dynamic_partitions(KRYONIX_TENANTS, [tenant_id])
        run = job_def.execute_in_process(instance=instance, tags={"dagster/partition": tenant_id},
                                         run_config=QUIET, raise_on_error=False)
        outcome[tenant_id] = run.success
    return outcome


def backed_up_tenants() -> list[str]:
    from ..resources import resources_from_env

    engine = resources_from_env()["engine"]
    return [s.id for s in engine.statuses() if s.status == "ativo" and s.last_session]


def main() -> int:
    tenants = backed_up_tenants()
    if not tenants:
        print("no backed-up active tenants: no checks to run", file=sys.stderr)
        return 0
    with DagsterInstance.get() as instance:
        outcome = check_tenants_once(instance, tenants)
    for tenant_id, passed in outcome.items():
        print(f"{tenant_id}: checks {'passed' if passed else 'FAILED (see the run in the UI)'}", file=sys.stderr)
    return 0 if all(outcome.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
