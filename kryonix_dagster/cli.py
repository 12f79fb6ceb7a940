"""`kryonix-backup`: the operator's CLI, on the same engine as the Dagster assets.

Exit codes: 0 success, 1 operation failed, 2 bad input. `--json` prints exactly one JSON
document on stdout, also on failure ({"ok": false, "error": ..., "exit_code": N}). Errors are one
line on stderr. Only a command that replaces data (`restore`) asks for confirmation, and only on a
terminal; without one it needs `--yes`.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence

import click

from .cli_lgpd import lgpd
from .engine import registry
from .engine.config import Settings, load_settings
from .engine.errors import BadInput, KryonixError, OperationFailed, one_line
from .engine.migrations import migrate
from .engine.naming import BACKUP_TYPES, PLANS, STATUSES, validate_tenant_id
from .cli_pitr import pitr as pitr_commands
from .progress import TerminalReporter, human_bytes

PROG = "kryonix-backup"


@dataclass
class _Output:
    json_emitted: bool = False


_OUTPUT = _Output()


def emit_json(document: Any) -> None:
    _OUTPUT.json_emitted = True
    click.echo(json.dumps(document, ensure_ascii=False, indent=2, default=str))


def info(message: str) -> None:
    click.echo(message, err=True)


def print_table(rows: list[dict], columns: list[str]) -> None:
    """Rows as an aligned plain-text table (values as text: a tenant id 007 stays 007)."""
    from tabulate import tabulate  # imported here: most commands print no table (start-up time)

    if not rows:
        click.echo("(none)")
        return
    body = [["-" if r.get(c) is None else str(r.get(c)) for c in columns] for r in rows]
    click.echo(tabulate(body, headers=[c.upper() for c in columns], tablefmt="simple", disable_numparse=True))


def ready_settings() -> Settings:
    """Settings from the environment, with the main database created/migrated (idempotent)."""
    settings = load_settings()
    migrate(settings)
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Per-tenant backup and disaster recovery for KRYONIX."""


cli.add_command(lgpd)  # lgpd apply | report (cli_lgpd.py); lgpd erase attaches to the same group


# --- tenants -------------------------------------------------------------------------------

@cli.group()
def tenants() -> None:
    """The tenant registry (tenants.clientes)."""


@tenants.command("add")
@click.argument("tenant_id")
@click.option("--name", required=True, help="Display name.")
@click.option("--plan", required=True, type=click.Choice(PLANS), help="Backup plan.")
def tenants_add(tenant_id: str, name: str, plan: str) -> None:
    """Register a tenant (status ativo)."""
    validate_tenant_id(tenant_id)
    if not name.strip():
        raise BadInput("--name must not be empty")
    tenant = registry.add_tenant(ready_settings(), tenant_id, name, plan)
    click.echo(f"tenant {tenant.id} added (plan {tenant.plano}, status {tenant.status})")


@tenants.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def tenants_list(as_json: bool) -> None:
    """List registered tenants."""
    rows = [t.to_json() for t in registry.list_tenants(ready_settings())]
    if as_json:
        emit_json(rows)
    else:
        print_table(rows, ["id", "nome", "plano", "status", "created_at"])


@tenants.command("set-status")
@click.argument("tenant_id")
@click.argument("status", type=click.Choice([s for s in STATUSES if s != "encerrado"]))  # encerrado: only offboard
def tenants_set_status(tenant_id: str, status: str) -> None:
    """Mark a tenant ativo or inativo."""
    validate_tenant_id(tenant_id)
    tenant = registry.set_status(ready_settings(), tenant_id, status)
    click.echo(f"tenant {tenant.id} is now {tenant.status}")


# --- demo ----------------------------------------------------------------------------------

@cli.group()
def demo() -> None:
    """Demo data for a local machine."""


@demo.command("seed")
@click.option("--tenants", "count", type=int, default=3, show_default=True, help="How many demo tenants.")
@click.option("--scale", type=float, default=1.0, show_default=True, help="Data volume per tenant.")
def demo_seed(count: int, scale: float) -> None:
    """Create (or resize) realistic demo tenants demo1..demoN in every service."""
    from .demo import seed_demo, validate_demo_args

    validate_demo_args(count, scale)
    seeded = seed_demo(ready_settings(), count, scale, progress=info)
    for tenant in seeded:
        click.echo(
            f"{tenant.tenant_id}: plan {tenant.plan}, {tenant.counts.contatos} contatos, "
            f"{tenant.objects} objects, {tenant.counts.sessions + tenant.counts.cached_contacts + 7} Redis keys"
        )


# --- backup and restore ---------------------------------------------------------------------

def _selected_tenants(settings: Settings, tenant_ids: tuple[str, ...], all_: bool, plan: str | None) -> list[str]:
    if all_:
        return [t.id for t in registry.list_tenants(settings, status="ativo", plan=plan)]
    missing = [tid for tid in tenant_ids if registry.get_tenant(settings, tid) is None]
    if missing:
        raise BadInput(f"tenant(s) not registered: {', '.join(missing)}")
    return list(dict.fromkeys(tenant_ids))


@cli.command()
@click.argument("tenant_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every active tenant.")
@click.option("--plan", type=click.Choice(PLANS), help="With --all: only tenants of this plan.")
@click.option("--type", "backup_type", type=click.Choice(BACKUP_TYPES), default="incremental", show_default=True)
@click.option("--wait", "wait_seconds", type=float, default=0, show_default=True,
              help="Seconds to wait for a tenant whose lease another session holds.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def backup(tenant_ids: tuple[str, ...], all_: bool, plan: str | None, backup_type: str, wait_seconds: float,
           as_json: bool) -> None:
    """Run one coordinated session (all tiers) per tenant."""
    from .dagster_bridge import report_session
    from .engine.session import run_backup

    for tid in tenant_ids:
        validate_tenant_id(tid)
    if all_ == bool(tenant_ids):
        raise BadInput("give tenant ids or --all (not both)")
    if plan and not all_:
        raise BadInput("--plan selects tenants with --all")
    settings = ready_settings()
    selected = _selected_tenants(settings, tenant_ids, all_, plan)
    reporter = TerminalReporter()
    if not selected:
        reporter.info("no active tenants" + (f" on plan {plan}" if plan else "") + ": nothing to back up")
    sessions, failures = [], []
    for n, tid in enumerate(selected, 1):
        if len(selected) > 1:
            reporter.info(f"[{n}/{len(selected)}] tenant {tid}")
        try:
            result = run_backup(settings, tid, backup_type, reporter, wait_seconds)
        except KryonixError as exc:
            if exc.exit_code == 2 and len(selected) == 1:
                raise
            failures.append(tid)
            sessions.append({"tenant": tid, "status": "failed", "success": False, "error": one_line(str(exc))})
            reporter.warn(one_line(str(exc)))
            continue
        if report_session(result):
            reporter.info(f"reported session {result.session_id} to the Dagster instance")
        sessions.append(result.to_json())
        if not result.success:
            failures.append(tid)
    summary = _summary(sessions)
    if len(selected) > 1:
        _notify_backup_summary(reporter, sessions, backup_type)
    if as_json:
        emit_json({"sessions": sessions, "summary": summary})
    else:
        for doc in sessions:
            click.echo(f"{doc['tenant']}: {doc['status']}"
                       + (f", session {doc['session']}, {human_bytes(doc['bytes_processed'])} read, "
                          f"{human_bytes(doc['bytes_added'])} added" if "session" in doc else "")
                       + (f" ({doc['error']})" if doc.get("error") else ""))
        if len(sessions) > 1:
            click.echo(f"total {summary['total']}, succeeded {summary['succeeded']}, failed {summary['failed']}, "
                       f"success rate {summary['success_rate']:.0%}")
    if failures:
        raise OperationFailed(f"backup failed for tenant(s) {', '.join(failures)}")


def _notify_backup_summary(reporter: TerminalReporter, sessions: list[dict], backup_type: str) -> None:
    """A multi-tenant backup's one summary to every notification channel: with any failure (or always
    with KRYONIX_NOTIFY_SUCCESS=true). A channel that fails is a warning, never the backup's failure."""
    from .engine import alerts

    failed = {s["tenant"]: _failure_reason(s) for s in sessions if not s.get("success")}
    urls = alerts.urls_from_env()
    if not urls or not (failed or alerts.notify_success()):
        return
    alert = alerts.batch_summary_alert(f"{backup_type} backup", len(sessions), failed, "kryonix-backup backup")
    delivered = alerts.deliver(urls, alert)
    if delivered:
        reporter.info(f"summary sent to {', '.join(delivered)}")
    if len(delivered) < len(urls):
        reporter.warn(f"summary not delivered to {len(urls) - len(delivered)} of {len(urls)} notification channel(s)"
                      " (see the log above)")


def _failure_reason(session: dict) -> str:
    tiers = "; ".join(f"{name}: {t['error']}" for name, t in (session.get("tiers") or {}).items() if t.get("error"))
    return one_line(session.get("error") or tiers or session.get("status") or "failed")


def _summary(sessions: list[dict]) -> dict:
    total = len(sessions)
    ok = sum(1 for s in sessions if s.get("success"))
    return {"total": total, "succeeded": ok, "failed": total - ok, "success_rate": (ok / total) if total else 1.0}


@cli.command()
@click.argument("tenant_id")
@click.option("--from", "from_", type=click.Choice(["primary", "secondary"]), default="primary", show_default=True,
              help="Which repository: the primary or the off-site copy.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def snapshots(tenant_id: str, from_: str, as_json: bool) -> None:
    """A tenant's restore points (sessions with a manifest), newest first."""
    from .engine.manifest import point_details, restore_points
    from .engine.tenant_repository import open_repository

    validate_tenant_id(tenant_id)
    repo = open_repository(ready_settings(), tenant_id, repository=from_)
    listed = restore_points(repo) if repo else []
    if as_json:  # each point's tiers from its manifest (one restic process each, no lock)
        emit_json([point_details(repo, p) for p in listed])
    else:
        rows = [{**p.to_json(), "emptied": ",".join(p.emptied) or "-"} for p in listed]
        print_table(rows, ["session", "time", "type", "status", "consistent", "emptied", "manifest_snapshot"])


@cli.command()
@click.argument("tenant_id")
@click.option("--read-data", is_flag=True, help="Also read and verify every stored byte.")
@click.option("--from", "from_", type=click.Choice(["primary", "secondary"]), default="primary", show_default=True,
              help="Which repository: the primary or the off-site copy.")
@click.option("--wait", "wait_seconds", type=float, default=0, show_default=True,
              help="Seconds to wait for the tenant's lease (a running session).")
@click.option("--live", is_flag=True, help="Compare the tenant's live data with the restore point it was restored "
              "from (or the newest, or --snapshot) instead of checking the repository.")
@click.option("--snapshot", default=None, help="With --live: the session to compare with.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def verify(tenant_id: str, read_data: bool, from_: str, wait_seconds: float, live: bool, snapshot: str | None,
           as_json: bool) -> None:
    """Check a tenant's repository and that every restore point is whole (--live: the live data)."""
    from .engine.verify import run_verify

    validate_tenant_id(tenant_id)
    if snapshot is not None and not live:
        raise BadInput("--snapshot goes with --live")
    if live and read_data:
        raise BadInput("--live compares the live data; --read-data checks the repository: one at a time")
    settings = ready_settings()
    if live:
        _verify_live(settings, tenant_id, snapshot, from_, wait_seconds, as_json)
        return
    task = f"tenant {tenant_id}: checking the repository" + (" (reading all data)" if read_data else "")
    with TerminalReporter().activity(task):
        result = run_verify(settings, tenant_id, read_data=read_data, wait_seconds=wait_seconds, repository=from_)
    if as_json:
        emit_json(result.to_json())
    else:
        click.echo(f"tenant {tenant_id}: {'ok' if result.ok else 'PROBLEMS'}, {result.restore_points} restore point(s)"
                   + (f", {len(result.unfinished_sessions)} unfinished session(s) awaiting forget"
                      if result.unfinished_sessions else ""))
        for problem in result.problems:
            click.echo(f"  - {problem}")
    if not result.ok:
        raise OperationFailed(f"tenant {tenant_id}: verification found {len(result.problems)} problem(s)")


def _verify_live(settings: Settings, tenant_id: str, snapshot: str | None, from_: str, wait_seconds: float,
                 as_json: bool) -> None:
    from .engine.live_verify import run_live_verify
    from .engine.restore import validate_snapshot

    if snapshot is not None:
        validate_snapshot(snapshot)
    with TerminalReporter().activity(f"tenant {tenant_id}: comparing the live data with a restore point"):
        result = run_live_verify(settings, tenant_id, snapshot, repository=from_, wait_seconds=wait_seconds)
    if as_json:
        emit_json(result.to_json())
    else:
        click.echo(f"tenant {tenant_id}: live data {'matches' if result.ok else 'DIFFERS FROM'} "
                   f"restore point {result.session_id}")
        for tier, differences in result.tiers.items():
            click.echo(f"  {tier}: {'ok' if not differences else 'DIFFERS'}")
            for difference in differences:
                click.echo(f"    - {difference}")
    if not result.ok:
        differing = [t for t, d in result.tiers.items() if d]
        raise OperationFailed(f"tenant {tenant_id}: live data differs from restore point {result.session_id} "
                              f"in {', '.join(differing)}")


def parse_point_in_time(raw: str) -> datetime:
    """`--at`: an ISO-8601 time with its zone, not in the future."""
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise BadInput(f"invalid --at {raw!r}: give an ISO-8601 time with its zone, e.g. 2026-11-29T02:00:00Z") from None
    if moment.tzinfo is None:
        raise BadInput(f"invalid --at {raw!r}: give the time zone too (Z or -03:00), an SRE's 02:00 is not everyone's")
    if moment > datetime.now(timezone.utc):
        raise BadInput(f"--at {raw} is in the future")
    return moment


def confirm_replacement(question: str, yes: bool) -> None:
    """Ask on a terminal; without one, only --yes lets data be replaced (DESIGN.md, CLI contract)."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise BadInput(f"{question.rstrip('?')}: add --yes to confirm (stdin is not a terminal, so nothing can ask)")
    click.confirm(question, abort=True, err=True)


@cli.command()
@click.argument("tenant_id")
@click.option("--snapshot", help="Session id (or manifest snapshot id) or latest (the default).")
@click.option("--at", "at", metavar="ISO-8601", help="Point in time to recover the database to (needs PITR).")
@click.option("--into", "into", help="Restore into this other (registered) tenant instead.")
@click.option("--from", "from_", type=click.Choice(["primary", "secondary"]), default="primary", show_default=True,
              help="Which repository: the primary or the off-site copy.")
@click.option("--services", help="Comma-separated tiers to restore (default: all in the session).")
@click.option("--schema", help="Restore only this PostgreSQL schema.")
@click.option("--yes", is_flag=True, help="Replace without asking (required when stdin is not a terminal).")
@click.option("--wait", "wait_seconds", type=float, default=0, show_default=True,
              help="Seconds to wait for the source's and the target's leases.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def restore(tenant_id: str, snapshot: str | None, at: str | None, into: str | None, from_: str, services: str | None,
            schema: str | None, yes: bool, wait_seconds: float, as_json: bool) -> None:
    """Replace a tenant's data (or --into another's) with a restore point."""
    from .engine.restore import parse_services, preview, run_restore, validate_restore_args

    wanted = parse_services(services)
    validate_restore_args(tenant_id, into, wanted, schema, "latest" if snapshot is None else snapshot)
    target = into or tenant_id
    if at is not None:
        if snapshot is not None:
            raise BadInput("give --snapshot or --at, not both")
        if schema is not None:
            raise BadInput("--at restores the whole database: give --snapshot with --schema")
        if from_ == "secondary":
            raise BadInput("--at comes from pgBackRest's repository (PITR), not the off-site copy: drop "
                           "--from secondary, or give --snapshot SESSION --from secondary")
        moment = parse_point_in_time(at)
        confirm_replacement(f"Replace tenant {target}'s current data with tenant {tenant_id}'s as of {at}?", yes)
        restore_at(moment, tenant_id, into, wanted, wait_seconds, as_json)
        return
    snapshot = "latest" if snapshot is None else snapshot
    what = f"schema {schema} of " if schema else ""
    session = snapshot
    if not yes and sys.stdin.isatty():  # name the session the prompt is about, and what is wrong with it
        session, warnings = preview(ready_settings(), tenant_id, snapshot, wanted, repository=from_)
        for warning in warnings:
            click.echo(f"warning: {warning}", err=True)
        session += " (latest)" if snapshot == "latest" else ""
    confirm_replacement(f"Replace {what}tenant {target}'s current data with session {session} of tenant {tenant_id}?",
                        yes)
    result = run_restore(ready_settings(), tenant_id, snapshot, into, wanted, schema, TerminalReporter(), wait_seconds,
                         repository=from_)
    if as_json:
        emit_json(result.to_json())
    else:
        echo_tier_outcomes(result.tiers, target)
        click.echo(f"restored session {result.session_id} of tenant {tenant_id} into tenant {target} "
                   f"in {result.duration_seconds:.1f}s")
        click.echo(f"lgpd: the erasure ledger re-erased {result.lgpd.get('subjects_reerased', 0)} subject(s)")


def echo_tier_outcomes(outcomes: dict, target: str) -> None:
    """One line per restored tier: what came back, what the restore deleted, connections ended."""
    for name, outcome in outcomes.items():
        click.echo(f"{name}: restored {outcome.restored} item(s) into tenant {target}, removed {outcome.removed} "
                   f"the restore point lacks, {outcome.connections_terminated} connection(s) terminated")


def restore_at(moment: datetime, tenant_id: str, into: str | None, wanted, wait_seconds: float,
               as_json: bool) -> None:
    """`restore --at`: the database as of `moment` (pgBackRest), other tiers from a restore point."""
    from .engine.pitr.restore_at import run_restore_at

    result = run_restore_at(ready_settings(), tenant_id, moment, into, wanted, TerminalReporter(), wait_seconds)
    if as_json:
        emit_json(result.to_json())
        return
    echo_tier_outcomes(result.tiers, result.target_id)
    for name, reason in result.skipped.items():
        click.echo(f"{name}: skipped ({reason})")
    source = (f"restore point {result.session_id} ({result.session_time.isoformat()})" if result.session_id
              else "no restore point at or before --at")
    click.echo(f"restored tenant {tenant_id}'s database as of {moment.isoformat()} into tenant "
               f"{result.target_id} in {result.duration_seconds:.1f}s; other tiers from {source}")
    click.echo(f"lgpd: the erasure ledger re-erased {result.lgpd.get('subjects_reerased', 0)} subject(s)")


@cli.command()
@click.argument("tenant_id")
@click.option("--dry-run", is_flag=True, help="Show what the plan keeps and removes; change nothing.")
@click.option("--repo", "repo_kind", type=click.Choice(["primary", "secondary"]), default="primary", show_default=True,
              help="secondary: the off-site copy, through its admin path (KRYONIX_REPO_SECONDARY_ADMIN).")
@click.option("--wait", "wait_seconds", type=float, default=0, show_default=True,
              help="Seconds to wait for the tenant's lease.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def forget(tenant_id: str, dry_run: bool, repo_kind: str, wait_seconds: float, as_json: bool) -> None:
    """Apply the tenant's plan retention (restic GFS) to every tier, then prune."""
    from .engine.retention import run_forget

    validate_tenant_id(tenant_id)
    settings = ready_settings()
    reporter = TerminalReporter()
    reporter.info(f"tenant {tenant_id}: applying retention" + (" (dry run)" if dry_run else " and pruning"))
    decision = run_forget(settings, tenant_id, dry_run=dry_run, wait_seconds=wait_seconds,
                          repository="secondary-admin" if repo_kind == "secondary" else "primary")
    if decision.warning:
        reporter.warn(decision.warning)
    if as_json:
        emit_json({**decision.to_json(), "dry_run": dry_run})
        return
    verb = "would remove" if dry_run else "removed"
    click.echo(f"tenant {tenant_id} (plan {decision.plan}): keeps {len(decision.kept_sessions)} restore point(s), "
               f"{verb} {len(decision.removed_sessions)}")
    for session in decision.sessions:
        click.echo(f"  {'keep  ' if session.keep else 'remove'} {session.session_id}  {session.time}  "
                   f"{', '.join(session.reasons)}")
    for tier, counts in decision.tiers.items():
        click.echo(f"  tier {tier}: keep {counts['keep']}, {verb} {counts['remove']}")
    if decision.unfinished_sessions:
        click.echo(f"  unfinished sessions {verb}: {', '.join(decision.unfinished_sessions)}")
    if decision.legal_hold_sessions:
        click.echo(f"  compliance snapshots kept under a legal hold: {len(decision.legal_hold_sessions)} session(s)")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def status(as_json: bool) -> None:
    """The fleet: last backup age, stale tenants, storage totals."""
    from .engine.fleet import fleet_status

    report = fleet_status(ready_settings())
    if as_json:
        emit_json(report)
        _refuse_missing_repositories(report)
        return
    rows = [{**t, "age_h": "-" if t["age_hours"] is None else f"{t['age_hours']:.1f}",
             "stale": "STALE" if t["stale"] else "", "repo": human_bytes(t["repo_bytes"]) if t["repo_bytes"] else "-",
             "check": {True: "ok", False: "FAILED", None: "-"}[t["last_check_ok"]],
             "drill": {True: "ok", False: "FAILED", None: "-"}[t["last_drill_ok"]],
             "points": t["restore_points"] if t["restore_points"] is not None else "-",
             "offsite_h": _offsite_cell(t.get("offsite"))}
            | ({"points": "MISSING", "repo": "MISSING", "check": "MISSING"} if t["repository"] == "missing" else {})
            for t in report["tenants"]]
    print_table(rows, ["id", "plano", "status", "last_session", "age_h", "stale", "points", "repo", "check", "drill",
                       "offsite_h"])
    day = report["last_24h"]
    click.echo(f"\n{len(report['tenants'])} tenants, {len(report['stale'])} stale, storage {human_bytes(report['storage_bytes'])}; "
               f"last 24 h: {day['sessions']} sessions ({day['succeeded']} ok) for {day['tenants']} tenants, "
               f"{human_bytes(day['bytes'])} read, average {human_bytes(day['average_bytes'])}")
    for t in report["tenants"]:
        for warning in t["last_warnings"]:
            click.echo(f"warning: tenant {t['id']}: {warning}")
    _refuse_missing_repositories(report)


def _refuse_missing_repositories(report: dict) -> None:
    """A repository that was backed up and is gone from its storage: the report is printed, and
    the command exits 1 naming them (runbook section 2), like `pitr status` for broken archiving."""
    missing = report["missing_repositories"]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise OperationFailed(f"{len(missing)} tenant(s) whose primary repository is missing: {shown}; "
                              "see the runbook, section 2 (`kryonix-backup restore ID --from secondary`)")


def _offsite_cell(lag: dict | None) -> str:
    """The off-site copy's lag in hours ("-": no copy configured or nothing to copy; "none":
    nothing of the tenant is off-site yet, however fresh its newest restore point is)."""
    if not lag or lag["lag_hours"] is None:
        return "-"
    shown = {"none": "none", "missing": "MISSING"}.get(lag.get("copy"), f"{lag['lag_hours']:.1f}")
    return shown + ("" if lag["ok"] else " LAGGING")


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("tenant_id")
@click.argument("restic_args", nargs=-1, type=click.UNPROCESSED)
def restic(tenant_id: str, restic_args: tuple[str, ...]) -> None:
    """Run restic on the tenant's repository: kryonix-backup restic ID -- ARGS..."""
    from .engine.tenant_repository import open_repository

    validate_tenant_id(tenant_id)
    args = list(restic_args)
    if args and args[0] == "--":
        args = args[1:]
    if not args:
        raise BadInput("give restic arguments after --, e.g. kryonix-backup restic 42 -- snapshots")
    refuse_foreign_repository_options(tenant_id, args)
    repo = open_repository(ready_settings(), tenant_id)
    if repo is None:
        raise BadInput(f"tenant {tenant_id} has never been backed up")
    code = repo.passthrough(args)
    if code:
        sys.exit(code)


# restic's options that choose a repository or a password: with them the escape hatch would run on
# (or copy into, or initialise) something other than the tenant's own repository.
_REPOSITORY_OPTIONS = ("--repo", "--repository-file", "--password-file", "--password-command", "--key-hint",
                       "--repo2", "--repository-file2", "--password-file2", "--password-command2", "--key-hint2",
                       "--from-repo", "--from-repository-file", "--from-password-file", "--from-password-command",
                       "--from-key-hint", "--insecure-no-password")
_REPOSITORY_SHORTHANDS = frozenset("rp")  # -r REPO, -p PASSWORD_FILE


def _shorthand_letters(arg: str) -> str:
    """The flag letters of a single-dash cluster: `-vr/tmp/x` -> "vr" (what follows is a value)."""
    if not arg.startswith("-") or arg.startswith("--"):
        return ""
    letters = ""
    for char in arg[1:]:
        if not char.isalpha():
            break
        letters += char
    return letters


def refuse_foreign_repository_options(tenant_id: str, args: Sequence[str]) -> None:
    for arg in args:
        name = arg.split("=", 1)[0]
        if name in _REPOSITORY_OPTIONS or _REPOSITORY_SHORTHANDS & set(_shorthand_letters(arg)):
            raise BadInput(f"tenant {tenant_id}: restic option {name} is not allowed here: the escape hatch "
                           f"always runs on the tenant's own repository with its own key")


from . import cli_offsite  # noqa: E402  (copy, keys)

cli_offsite.register(cli)


# --- entry point ---------------------------------------------------------------------------

def json_requested(argv: Sequence[str]) -> bool:
    """Whether the command line asks a command that has --json for it (before any `--`)."""
    args = list(argv)
    if "--" in args:
        args = args[: args.index("--")]
    command: click.Command = cli
    for token in args:
        if isinstance(command, click.Group) and token in command.commands:
            command = command.commands[token]
    has_json = any(p.name == "as_json" for p in command.params)
    return has_json and "--json" in args


cli.add_command(pitr_commands)  # issue 11: pitr setup|backup|status
from .cli_erasure import erase as _erase, offboard as _offboard  # noqa: E402
tenants.add_command(_offboard)  # tenants offboard (cli_erasure.py)
lgpd.add_command(_erase)  # lgpd erase (cli_erasure.py) beside lgpd apply | report


def fail(message: str, exit_code: int, as_json: bool, label: str = "error: ") -> None:
    """One line on stderr; with --json also one document on stdout, unless the command printed its own."""
    click.echo(f"{PROG}: {label}{message}", err=True)
    if as_json and not _OUTPUT.json_emitted:
        emit_json({"ok": False, "error": message, "exit_code": exit_code})
    sys.exit(exit_code)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: map every failure to one line and an exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = sys.argv[1:] if argv is None else list(argv)
    as_json = json_requested(args)
    try:
        cli.main(args=args, prog_name=PROG, standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        fail("aborted", 1, as_json, label="")
    except click.UsageError as exc:
        fail(one_line(exc.format_message()), 2, as_json)
    except click.ClickException as exc:
        fail(one_line(exc.format_message()), exc.exit_code, as_json)
    except KryonixError as exc:
        fail(one_line(str(exc)), exc.exit_code, as_json)
    except KeyboardInterrupt:
        fail("interrupted", 130, as_json, label="")
    except Exception as exc:  # unexpected: one line unless debugging
        if os.environ.get("KRYONIX_DEBUG"):
            raise
        fail(f"{type(exc).__name__}: {one_line(str(exc))}", 1, as_json, label="internal error: ")
    sys.exit(0)


if __name__ == "__main__":
    main()
