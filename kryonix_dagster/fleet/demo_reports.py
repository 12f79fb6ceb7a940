"""`main()`: the fleet report and the LGPD compliance report materialised once, with their
checks (each tenant's `lgpd_compliance` on its partition), recorded in the instance
DAGSTER_HOME names, through the same jobs their schedules launch. What `make demo` calls last,
so the first look at the UI shows both reports. Read-only: no tenant's data changes."""
from __future__ import annotations

import sys

from dagster import DagsterInstance, build_resources

from .tenant_checks import QUIET

REPORT_JOBS = ("lgpd_report_job", "fleet_report_job")  # the fleet report shows the LGPD report's result


def materialize_reports(instance: DagsterInstance) -> dict[str, bool]:
    """Each report job once on `instance`, every registered tenant known as a partition first
    (so its lgpd_compliance lands on it): {job: succeeded}."""
    from ..definitions import defs
    from ..partitions import KRYONIX_TENANTS
    from ..resources import resources_from_env

    with build_resources({"engine": resources_from_env()["engine"]}) as built:  # EnvVars resolved as in a run
        tenants = built.engine.tenant_ids()
    missing = [t for t in tenants if not instance.has_dynamic_partition(KRYONIX_TENANTS, t)]
    if missing:
        instance.add_dynamic_partitions(KRYONIX_TENANTS, missing)
    return {name: defs.resolve_job_def(name).execute_in_process(instance=instance, run_config=QUIET,
                                                                 raise_on_error=False).success
            for name in REPORT_JOBS}


def main() -> int:
    with DagsterInstance.get() as instance:
        outcome = materialize_reports(instance)
    for name, ok in outcome.items():
        print(f"{name}: {'materialized' if ok else 'FAILED (see the run in the UI)'}", file=sys.stderr)
    return 0 if all(outcome.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
