"""`kryonix-backup`: the operator's CLI, on the same engine as the Dagster assets.

Exit codes: 0 success, 1 operation failed, 2 bad input. `--json` prints exactly one JSON
document on stdout. Errors are one line on stderr. Nothing ever prompts.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from .engine import registry
from .engine.config import Settings, load_settings
from .engine.errors import BadInput, KryonixError, one_line
from .engine.migrations import migrate
from .engine.naming import PLANS, STATUSES, validate_tenant_id

PROG = "kryonix-backup"


def emit_json(document: Any) -> None:
    click.echo(json.dumps(document, ensure_ascii=False, indent=2, default=str))


def info(message: str) -> None:
    click.echo(message, err=True)


def print_table(rows: list[dict], columns: list[str]) -> None:
    if not rows:
        click.echo("(none)")
        return
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        click.echo("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns).rstrip())


def ready_settings() -> Settings:
    """Settings from the environment, with the main database created/migrated (idempotent)."""
    settings = load_settings()
    migrate(settings)
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Per-tenant backup and disaster recovery for KRYONIX."""


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
@click.argument("status", type=click.Choice(STATUSES))
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
    from .engine.demo import seed_demo, validate_demo_args

    validate_demo_args(count, scale)
    seeded = seed_demo(ready_settings(), count, scale, progress=info)
    for tenant in seeded:
        click.echo(
            f"{tenant.tenant_id}: plan {tenant.plan}, {tenant.counts.contatos} contatos, "
            f"{tenant.objects} objects, {tenant.counts.sessions + tenant.counts.cached_contacts + 7} Redis keys"
        )


# --- entry point ---------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    """Console-script entry: map every failure to one line and an exit code."""
    try:
        cli.main(args=argv, prog_name=PROG, standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo(f"{PROG}: aborted", err=True)
        sys.exit(1)
    except click.UsageError as exc:
        click.echo(f"{PROG}: error: {one_line(exc.format_message())}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"{PROG}: error: {one_line(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except KryonixError as exc:
        click.echo(f"{PROG}: error: {one_line(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo(f"{PROG}: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # unexpected: one line unless debugging
        if os.environ.get("KRYONIX_DEBUG"):
            raise
        click.echo(f"{PROG}: internal error: {type(exc).__name__}: {one_line(str(exc))}", err=True)
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    main()
