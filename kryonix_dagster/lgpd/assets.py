"""LGPD assets: the per-tenant retention run and the fleet compliance report for reviewers."""
import json
from datetime import timezone

from dagster import (AssetCheckResult, AssetCheckSpec, AssetExecutionContext, Failure, MaterializeResult, MetadataValue,
                     asset)

from ..engine.alerts import MAX_IDS_SHOWN, Alert, first_ids, send_logged
from ..engine.errors import KryonixError, one_line
from ..partitions import kryonix_tenants
from ..resources import AlertsResource, BackupEngineResource
from .metadata import (FLEET_COMPLIANCE_CHECK, GROUP, LGPD_RETENTION_ASSET, fleet_evaluation, log_tenant_evaluations,
                       retention_metadata)


@asset(name=LGPD_RETENTION_ASSET, partitions_def=kryonix_tenants, group_name=GROUP, kinds={"postgres"},
       description="The LGPD retention rules applied to the tenant's live database (`kryonix-backup lgpd apply ID`): "
                   "inactive contacts anonymised unless they consented, old processing logs and analytics events "
                   "deleted. Rows per rule as numeric metadata; each change is in the tenant's lgpd.log_processamento.")
def lgpd_retention(context: AssetExecutionContext, engine: BackupEngineResource) -> MaterializeResult:
    tenant_id = context.partition_key
    try:
        result = engine.lgpd_apply(tenant_id)
    except KryonixError as exc:
        raise Failure(description=one_line(str(exc)), metadata={"tenant": tenant_id}) from None
    context.log.info(f"tenant {tenant_id}: {result.total_rows} row(s) past their period changed")
    return MaterializeResult(metadata=retention_metadata(result))


def lgpd_alert(fleet, buckets: dict[str, int] | None = None) -> Alert:
    """The compliance report as a notification: counts, then each non-compliant tenant's buckets (the
    seed's report counts them) and problems."""
    bad = [t for t in fleet.tenants if not t.compliant]
    buckets = buckets or {}
    lines = [f"LGPD compliance report ({fleet.generated_at.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC): {len(fleet.tenants)} tenant(s), "
             f"{len(bad)} not compliant, {sum(t.overdue_rows for t in fleet.tenants)} row(s) past their period, "
             f"{sum(t.ledger_pending for t in fleet.tenants)} erasure-ledger entr(ies) pending"]
    for tenant in bad[:MAX_IDS_SHOWN]:
        count = buckets.get(tenant.tenant_id)
        lines.append(f"- {tenant.tenant_id} ({'?' if count is None else count} bucket(s)): "
                     + "; ".join(one_line(p, 200) for p in tenant.problems))
    if len(bad) > MAX_IDS_SHOWN:
        lines.append(f"… and {len(bad) - MAX_IDS_SHOWN} more: `kryonix-backup lgpd report` lists them all")
    return Alert("lgpd", f"kryonix-backup: LGPD: {len(bad)} tenant(s) not compliant: {first_ids(fleet.non_compliant, 5)}",
                 "\n".join(lines), fields={"non_compliant": fleet.non_compliant})


@asset(group_name=GROUP, kinds={"postgres", "json"},
       check_specs=[AssetCheckSpec(FLEET_COMPLIANCE_CHECK, asset="lgpd_compliance_report",
                                   description="ERROR naming every tenant whose personal data outlives its period")],
       description="LGPD compliance of every registered tenant (`kryonix-backup lgpd report`): personal data past "
                   "its period, restore points past the plan, erasure-ledger entries not yet rewritten out of old "
                   "restore points, last retention run, last erasure. Read-only. Its check fails naming the "
                   "non-compliant tenants, and each tenant's `lgpd_compliance` is evaluated on its partition; the "
                   "whole report is downloadable as the `json` metadata; a non-compliant tenant sends the report to "
                   "the notification channels.")
def lgpd_compliance_report(context: AssetExecutionContext, engine: BackupEngineResource,
                           alerts: AlertsResource) -> MaterializeResult:
    fleet = engine.lgpd_fleet_compliance()
    doc = json.loads(json.dumps(fleet.to_json(), default=str))
    path = engine.reports_dir() / "lgpd_compliance_report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))
    log_tenant_evaluations(context, fleet)
    context.log.info(f"{len(fleet.tenants)} tenants, {len(fleet.non_compliant)} not compliant: "
                     f"{', '.join(fleet.non_compliant) or 'none'}")
    if fleet.non_compliant:  # the report goes out whenever a tenant is not compliant
        try:
            buckets = engine.bucket_counts(fleet.non_compliant[:MAX_IDS_SHOWN])
        except Exception as exc:  # the object storage unreachable: the report goes out without the counts
            context.log.warning(f"bucket counts unavailable: {type(exc).__name__}: {one_line(str(exc), 200)}")
            buckets = {}
        send_logged(context.log, alerts, lgpd_alert(fleet, buckets))
    return MaterializeResult(metadata={
        "tenants": MetadataValue.int(len(fleet.tenants)),
        "non_compliant_tenants": MetadataValue.int(len(fleet.non_compliant)),
        "overdue_rows": MetadataValue.int(sum(t.overdue_rows for t in fleet.tenants)),
        "ledger_pending": MetadataValue.int(sum(t.ledger_pending for t in fleet.tenants)),
        "report": MetadataValue.md(fleet.markdown()),
        "json": MetadataValue.json(doc),
        "json_file": MetadataValue.path(str(path)),
    }, check_results=[AssetCheckResult(check_name=FLEET_COMPLIANCE_CHECK, **fleet_evaluation(fleet))])
