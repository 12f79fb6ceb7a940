"""`kryonix-backup copy` and `kryonix-backup keys …`: the off-site copy and the key vault.

Registered on the main group by `cli.py` (one line); the commands follow its contract
(exit 0/1/2, `--json` prints one document, errors one line).
"""
from __future__ import annotations

from pathlib import Path

import click

from .engine.errors import KryonixError, OperationFailed, one_line


def register(cli: click.Group) -> None:
    cli.add_command(copy)
    cli.add_command(keys)


@click.command()
@click.argument("tenant_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every registered tenant.")
@click.option("--wait", "wait_seconds", type=float, default=0, show_default=True,
              help="Seconds to wait for a tenant whose lease another operation holds.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def copy(tenant_ids: tuple[str, ...], all_: bool, wait_seconds: float, as_json: bool) -> None:
    """Copy restore points not yet in the off-site copy (KRYONIX_REPO_SECONDARY), whole ones only."""
    from .cli import emit_json, ready_settings
    from .dagster_bridge import report_copies
    from .engine import locations
    from .engine.offsite import run_copy, selected
    from .progress import TerminalReporter

    settings = ready_settings()
    locations.location(settings, locations.SECONDARY)  # configured, or exit 2
    chosen = selected(settings, tenant_ids, all_)
    reporter = TerminalReporter()
    results, failures, copied = [], [], []
    for tenant_id in chosen:
        try:
            copied.append(run_copy(settings, tenant_id, wait_seconds, reporter))
            results.append(copied[-1].to_json())
        except KryonixError as exc:
            if exc.exit_code == 2 and len(chosen) == 1:
                raise
            failures.append(tenant_id)
            results.append({"tenant": tenant_id, "error": one_line(str(exc))})
            reporter.warn(one_line(str(exc)))
    if report_copies(settings, copied):
        reporter.info(f"reported {len(copied)} copy(ies) to the Dagster instance")
    if as_json:
        emit_json({"copies": results, "failed": failures})
    else:
        for doc in results:
            click.echo(f"{doc['tenant']}: " + (f"error: {doc['error']}" if "error" in doc else
                       f"{len(doc['copied_sessions'])} restore point(s) copied, "
                       f"{doc['restore_points_secondary']} in the off-site copy"))
    if failures:
        raise OperationFailed(f"copy failed for tenant(s) {', '.join(failures)}")


@click.group()
def keys() -> None:
    """The key vault: recover it, rotate the master key, rotate repository passwords."""


@keys.command("recover")
@click.option("--from", "from_", type=click.Choice(["primary", "secondary"]), default="primary", show_default=True,
              help="Where to read the stashed wrapped passwords.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def keys_recover(from_: str, as_json: bool) -> None:
    """Fill what is missing in the main database (registry rows, key rows, erasure ledgers, the
    PITR passphrase) from the sealed stashes; never overwrites a row that exists."""
    from .cli import emit_json, ready_settings
    from .engine.key_recovery import recover_keys

    result = recover_keys(ready_settings(), from_)
    if as_json:
        emit_json(result.to_json())
    else:
        for tenant in result.recovered:
            what = ", ".join(f"{tenant.ledger_entries} ledger entr{'y' if tenant.ledger_entries == 1 else 'ies'}"
                             if item == "ledger" else f"{item} row" for item in tenant.filled)
            click.echo(f"{tenant.tenant_id}: filled {what} ({tenant.plan}"
                       + (f", {tenant.restore_points} restore point(s)" if "key" in tenant.filled else "") + ")")
        for stanza in result.pitr_passphrases:
            click.echo(f"PITR stanza {stanza}: filled its repository passphrase")
        for tenant_id, why in result.skipped.items():
            click.echo(f"{tenant_id}: skipped ({why})")
        if not result.recovered and not result.pitr_passphrases:
            click.echo(f"nothing was missing: the main database already holds everything stashed beside the "
                       f"{from_} repositories")
        else:
            click.echo(f"{len(result.recovered)} tenant(s) and {len(result.pitr_passphrases)} PITR passphrase(s) "
                       f"filled from the {from_} repositories")
    if result.skipped:
        raise OperationFailed(f"{len(result.skipped)} tenant(s) not recovered: {', '.join(result.skipped)}")


@keys.command("rotate-master")
@click.option("--new-key-file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The new master key (32 random bytes, base64), mode 0600.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def keys_rotate_master(new_key_file: Path, as_json: bool) -> None:
    """Re-wrap every tenant's password under a new master key (resumable)."""
    from .cli import emit_json, ready_settings
    from .engine.key_rotation import rotate_master

    result = rotate_master(ready_settings(), new_key_file)
    if as_json:
        emit_json(result.to_json())
    else:
        click.echo(f"master key {result.old_key_id} -> {result.new_key_id}: {len(result.rewrapped)} password(s) "
                   f"re-wrapped, {len(result.already)} already")


@keys.command("rotate")
@click.argument("tenant_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every tenant with a key in the vault.")
@click.option("--wait", "wait_seconds", type=float, default=0, show_default=True,
              help="Seconds to wait for a tenant whose lease another operation holds.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def keys_rotate(tenant_ids: tuple[str, ...], all_: bool, wait_seconds: float, as_json: bool) -> None:
    """Give tenants' repositories a new password (key add, vault, then key remove)."""
    from .cli import emit_json, ready_settings
    from .engine import keys as vault
    from .engine.errors import BadInput
    from .engine.key_rotation import rotate_tenant
    from .engine.naming import validate_tenant_id

    for tid in tenant_ids:
        validate_tenant_id(tid)
    if all_ == bool(tenant_ids):
        raise BadInput("give tenant ids or --all (not both)")
    settings = ready_settings()
    chosen = [w.tenant_id for w in vault.wrapped_keys(settings)] if all_ else list(dict.fromkeys(tenant_ids))
    results, failures = [], []
    for tenant_id in chosen:
        try:
            results.append(rotate_tenant(settings, tenant_id, wait_seconds).to_json())
        except KryonixError as exc:
            if exc.exit_code == 2 and len(chosen) == 1:
                raise
            failures.append(tenant_id)
            results.append({"tenant_id": tenant_id, "error": one_line(str(exc))})
    if as_json:
        emit_json({"rotated": results, "failed": failures})
    else:
        for doc in results:
            click.echo(f"{doc['tenant_id']}: " + (f"error: {doc['error']}" if "error" in doc else
                       f"new password in {', '.join(doc['repositories'])}, {doc['removed_keys']} old key(s) removed"))
    if failures:
        raise OperationFailed(f"key rotation failed for tenant(s) {', '.join(failures)}")
