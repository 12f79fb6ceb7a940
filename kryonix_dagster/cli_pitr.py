"""`kryonix-backup pitr setup|backup|status`: WAL archiving and base backups with pgBackRest,
and the recoverable window (`restore ID --at T` lives with `restore` in cli.py)."""
from __future__ import annotations

import click

from .engine.errors import OperationFailed
from .engine.pitr import archive
from .progress import TerminalReporter, human_bytes


def _cli():
    from . import cli as root  # late: cli.py registers this group at import time
    return root


@click.group()
def pitr() -> None:
    """Point-in-time recovery: WAL archive and base backups (pgBackRest)."""


@pitr.command("setup")
@click.option("--restart", is_flag=True, help="Restart the local cluster when archive_mode needs it.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def pitr_setup(restart: bool, as_json: bool) -> None:
    """Configure WAL archiving of the cluster behind KRYONIX_PG_DSN and create the stanza (idempotent)."""
    root = _cli()
    result = archive.setup(root.ready_settings(), restart=restart, report=TerminalReporter(quiet=as_json))
    if as_json:
        root.emit_json(result.to_json())
    else:
        click.echo(f"stanza {result.stanza}: WAL archiving on"
                   + (" (PostgreSQL restarted)" if result.restarted else "")
                   + ("; archive check passed" if result.checked else ""))


@pitr.command("backup")
@click.option("--type", "backup_type", type=click.Choice(archive.BACKUP_TYPES), default="full", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def pitr_backup(backup_type: str, as_json: bool) -> None:
    """Take a base backup of the cluster."""
    root = _cli()
    backup = archive.base_backup(root.ready_settings(), backup_type, TerminalReporter(quiet=as_json))
    if as_json:
        root.emit_json(backup.to_json())
    else:
        size = human_bytes(backup.size_bytes) if backup.size_bytes is not None else "?"
        click.echo(f"{backup.type} backup {backup.label} done ({size}), stopped {backup.stopped.isoformat()}")


@pitr.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def pitr_status(as_json: bool) -> None:
    """Archiving health, base backups and the recoverable window (exit 1 when archiving is unhealthy)."""
    root = _cli()
    state = archive.status(root.ready_settings())
    if as_json:
        root.emit_json(state.to_json())
    else:
        a = state.archiving
        click.echo(f"stanza {state.stanza} ({state.repository})")
        click.echo(f"archiving: {'healthy' if a.healthy else 'UNHEALTHY: ' + str(a.problem)}; last archived "
                   f"{a.last_archived_wal or '-'} at {archive._iso(a.last_archived_time) or '-'}; "
                   f"lag {a.lag_seconds:.0f}s, {a.pending_segments} segment(s) waiting")
        root.print_table([{"label": b.label, "type": b.type, "stopped": archive._iso(b.stopped),
                           "size": human_bytes(b.size_bytes) if b.size_bytes is not None else None}
                          for b in state.backups], ["label", "type", "stopped", "size"])
        click.echo(f"window: earliest {state.window.to_json()['earliest'] or '-'}, "
                   f"latest {state.window.to_json()['latest'] or '-'}")
        later = [t for t in state.tenants if t.starts_with != "window"]
        if later:  # the others start with the window
            click.echo(f"{len(later)} tenant(s) whose own window starts later (their database is newer, or missing):")
            root.print_table([{"tenant": t.tenant_id, "earliest": archive._iso(t.earliest) or "-",
                               "database created": archive._iso(t.database_created) or "no database"}
                              for t in later], ["tenant", "earliest", "database created"])
        if state.tenants_problem:
            click.echo(state.tenants_problem)
    if not state.archiving.healthy:
        raise OperationFailed(f"stanza {state.stanza}: {state.archiving.problem}")


@pitr.command("restore-cluster")
@click.option("--at", "at", metavar="ISO-8601", help="Recover to this moment (default: the end of the WAL archive).")
@click.option("--yes", is_flag=True, help="Replace without asking (required when stdin is not a terminal).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def pitr_restore_cluster(at: str | None, yes: bool, as_json: bool) -> None:
    """The whole cluster back from pgBackRest after it is lost (refused while it runs or answers)."""
    from .engine.config import load_settings
    from .engine.pitr.cluster_restore import restore_cluster

    root = _cli()
    moment = root.parse_point_in_time(at) if at else None
    settings = load_settings()  # not ready_settings: the main database may be in the lost cluster
    result = restore_cluster(settings, moment, lambda question: root.confirm_replacement(question, yes),
                             TerminalReporter(quiet=as_json))
    if as_json:
        root.emit_json(result.to_json())
    else:
        click.echo(f"cluster {result.data_dir} restored from stanza {result.stanza} "
                   f"({'to ' + result.target if result.target else 'to the end of the archive'}"
                   + (", with --delta" if result.delta else "") + f"), started on port {result.port} with "
                   f"{result.started_with}, timeline {result.timeline}, archiving checked"
                   + (", audit row written" if result.audited else ", NO audit row (see the warning)")
                   + (f"; the old data directory is in {result.moved_aside}" if result.moved_aside else ""))
        click.echo(f"put back after the restore: {result.merged.describe()}")
