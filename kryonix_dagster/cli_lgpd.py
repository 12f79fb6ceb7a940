"""`kryonix-backup lgpd …`: personal-data retention and the compliance report.

The `lgpd` group is created here; the erasure half attaches `lgpd erase` to it. Helpers of
cli.py are imported inside the commands (cli.py imports this module to register the group).

- `lgpd apply ID…|--all [--dry-run] [--wait S] [--json]`: the retention rules on each tenant's
  live database, counts per rule; `--all` is every registered tenant (inactive tenants still
  hold personal data) except the off-boarded ones (status encerrado: their data is erased).
  Exit 1 when any tenant failed (the others are still applied).
- `lgpd report [ID] [--json]`: the compliance report of one tenant or of the fleet. Exit 1
  when a tenant is not compliant (personal data past its period, or restore points kept past
  the plan, or those could not be judged), after printing the whole report: a scheduler or a
  reviewer's script can gate on the exit code alone.
"""
from __future__ import annotations

import click

from .engine.errors import BadInput, KryonixError, OperationFailed, one_line
from .engine.naming import validate_tenant_id


@click.group()
def lgpd() -> None:
    """LGPD: personal-data retention, compliance report (and erasure)."""


def _apply_targets(settings, tenant_ids: tuple[str, ...], all_: bool) -> list[str]:
    from .engine import registry

    for tid in tenant_ids:
        validate_tenant_id(tid)
    if all_ == bool(tenant_ids):
        raise BadInput("give tenant ids or --all (not both)")
    if all_:
        return registry.list_tenant_ids(settings)  # off-boarded (encerrado) tenants hold nothing any more
    missing = [tid for tid in tenant_ids if registry.get_tenant(settings, tid) is None]
    if missing:
        raise BadInput(f"tenant(s) not registered: {', '.join(missing)}")
    return list(dict.fromkeys(tenant_ids))


@lgpd.command("apply")
@click.argument("tenant_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every registered tenant.")
@click.option("--dry-run", is_flag=True, help="Count what would change; change nothing.")
@click.option("--wait", "wait_seconds", type=float, default=0, show_default=True,
              help="Seconds to wait for a tenant whose lease another operation holds.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def lgpd_apply(tenant_ids: tuple[str, ...], all_: bool, dry_run: bool, wait_seconds: float, as_json: bool) -> None:
    """Apply the LGPD retention rules (anonymise/delete personal data past its period)."""
    from .cli import emit_json, info, ready_settings
    from .engine.lgpd.retention import apply
    from .engine.lgpd.rules import load_rules

    for tid in tenant_ids:
        validate_tenant_id(tid)
    rules = load_rules()
    settings = ready_settings()
    targets = _apply_targets(settings, tenant_ids, all_)
    results, failures = [], {}
    for n, tid in enumerate(targets, 1):
        if len(targets) > 1:
            info(f"[{n}/{len(targets)}] tenant {tid}")
        try:
            result = apply(settings, tid, rules, dry_run=dry_run, wait_seconds=wait_seconds)
        except KryonixError as exc:
            if exc.exit_code == 2 and len(targets) == 1:
                raise
            failures[tid] = one_line(str(exc))
            results.append({"tenant": tid, "ok": False, "error": failures[tid]})
            info(f"tenant {tid}: {failures[tid]}")
            continue
        results.append({**result.to_json(), "ok": True})
        if not as_json:
            _print_result(result)
    if as_json:
        emit_json({"dry_run": dry_run, "tenants": results, "failed": sorted(failures),
                   "total_rows": sum(r.get("total_rows", 0) for r in results)})
    if failures:
        raise OperationFailed(f"LGPD retention failed for tenant(s) {', '.join(failures)}")


def _print_result(result) -> None:
    verb = {"anonymise": "would anonymise" if result.dry_run else "anonymised",
            "delete": "would delete" if result.dry_run else "deleted"}
    click.echo(f"tenant {result.tenant_id}: {result.total_rows} row(s) "
               + ("would change (dry run)" if result.dry_run else "changed")
               + ("" if result.log_table or not result.database else "; no lgpd.log_processamento to log in"))
    for rule in result.rules:
        if rule.skipped:
            click.echo(f"  {rule.rule}: skipped ({rule.skipped})")
        else:
            click.echo(f"  {rule.rule}: {verb[rule.action]} {rule.rows} row(s) of {rule.table} older than {rule.period}")


@lgpd.command("report")
@click.argument("tenant_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def lgpd_report(tenant_id: str | None, as_json: bool) -> None:
    """Compliance: personal data past its period, restore points past the plan, ledger, last runs."""
    from .cli import emit_json, ready_settings
    from .engine.lgpd.report import FleetCompliance, fleet_compliance, tenant_compliance
    from .engine.lgpd.rules import load_rules
    from datetime import datetime, timezone

    if tenant_id is not None:
        validate_tenant_id(tenant_id)
    rules = load_rules()
    settings = ready_settings()
    if tenant_id is None:
        fleet = fleet_compliance(settings, rules)
    else:
        fleet = FleetCompliance(datetime.now(timezone.utc), [tenant_compliance(settings, tenant_id, rules)])
    if as_json:
        emit_json(fleet.to_json() if tenant_id is None else fleet.tenants[0].to_json())
    else:
        click.echo(fleet.markdown())
        for tenant in fleet.tenants:
            for rule in tenant.rules:
                if rule.skipped and tenant.database:
                    click.echo(f"note: tenant {tenant.tenant_id}: rule {rule.rule} skipped ({rule.skipped})")
            for problem in tenant.problems:
                click.echo(f"NOT COMPLIANT: tenant {tenant.tenant_id}: {problem}")
    if not fleet.compliant:
        raise OperationFailed(f"LGPD: tenant(s) not compliant: {', '.join(fleet.non_compliant)}")
