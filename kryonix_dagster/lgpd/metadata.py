"""LGPD results as Dagster metadata and check evaluations: numbers per rule, never a personal value."""
from dagster import AssetCheckEvaluation, AssetCheckSeverity, AssetKey, MetadataValue

from ..partitions import KRYONIX_TENANTS

LGPD_RETENTION_ASSET = "lgpd_retention"
COMPLIANCE_CHECK = "lgpd_compliance"
FLEET_COMPLIANCE_CHECK = "all_tenants_compliant"  # on lgpd_compliance_report
GROUP = "lgpd"


def retention_metadata(result) -> dict:
    """Rows changed per rule (numeric, so the UI plots them), totals, and why rules were skipped."""
    metadata = {f"rows_{r.rule}": MetadataValue.int(r.rows) for r in result.rules if not r.skipped}
    metadata.update({
        "rows_total": MetadataValue.int(result.total_rows),
        "log_rows": MetadataValue.int(sum(r.logged for r in result.rules)),
        "rules_skipped": MetadataValue.int(len(result.skipped)),
        "seconds": MetadataValue.float(round(result.seconds, 3)),
    })
    if result.skipped:
        metadata["skipped"] = MetadataValue.json({r.rule: r.skipped for r in result.skipped})
    return metadata


def compliance_evaluation(report) -> dict:
    """passed/severity/description/metadata of the lgpd_compliance check: ERROR when personal
    data outlives its period (live rows past a rule's period, restore points past the plan)."""
    problems = report.problems
    text = "; ".join(problems) if problems else (
        f"no personal data past its period ({sum(1 for r in report.rules if r.skipped)} rule(s) skipped)")
    metadata = {f"overdue_{r.rule}": MetadataValue.int(r.rows) for r in report.rules if not r.skipped}
    metadata.update({
        "overdue_rows": MetadataValue.int(report.overdue_rows),
        "ledger_pending": MetadataValue.int(report.ledger_pending),
        "rules_skipped": MetadataValue.int(sum(1 for r in report.rules if r.skipped)),
    })
    if report.restore_points_past_plan is not None:
        metadata["restore_points_past_plan"] = MetadataValue.int(report.restore_points_past_plan)
    if report.last_retention:
        metadata["last_retention"] = MetadataValue.timestamp(report.last_retention.at)
    return {
        "passed": not problems,
        "severity": AssetCheckSeverity.ERROR,
        "description": f"tenant {report.tenant_id}: {text}",
        "metadata": metadata,
    }


def tenant_evaluation(fields: dict, tenant_id: str) -> AssetCheckEvaluation:
    """A tenant's lgpd_compliance result as an event on its partition (logged by a run that
    evaluated the whole fleet)."""
    return AssetCheckEvaluation(asset_key=AssetKey(LGPD_RETENTION_ASSET), check_name=COMPLIANCE_CHECK,
                                partition=tenant_id, **fields)


def log_tenant_evaluations(context, fleet) -> None:
    """Each tenant's lgpd_compliance on its partition, for the tenants Dagster knows as
    partitions (the tenant_partitions sensor keeps them equal to the registry)."""
    instance = context.instance
    for report in fleet.tenants:
        if instance.has_dynamic_partition(KRYONIX_TENANTS, report.tenant_id):
            context.log_event(tenant_evaluation(compliance_evaluation(report), report.tenant_id))


def fleet_evaluation(fleet) -> dict:
    """ERROR naming every tenant whose personal data outlives its period."""
    bad = fleet.non_compliant
    return {
        "passed": not bad,
        "severity": AssetCheckSeverity.ERROR,
        "description": (f"{len(bad)} of {len(fleet.tenants)} tenant(s) not compliant: " + ", ".join(bad)) if bad else
                       f"all {len(fleet.tenants)} tenant(s) compliant",
        "metadata": {
            "tenants": MetadataValue.int(len(fleet.tenants)),
            "non_compliant_tenants": MetadataValue.int(len(bad)),
            "non_compliant": MetadataValue.json(bad),
            "problems": MetadataValue.json({t.tenant_id: t.problems for t in fleet.tenants if t.problems}),
        },
    }
