"""CLI verbs of LGPD erasure: `lgpd erase` and `tenants offboard` (plain click commands, so each
is attached to its group with one line in cli.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from .cli import confirm_replacement, emit_json, ready_settings
from .engine.naming import validate_tenant_id
from .progress import TerminalReporter


SUBJECT_FILE_LIMIT = 4096  # one KIND=VALUE line; anything bigger is not a subject file


def read_subject_file(name: str) -> str:
    """The one `KIND=VALUE` line of FILE (or of stdin for `-`); the value never appears in an
    error. Blank lines and the line ending are ignored; a second line is refused."""
    from .engine.errors import BadInput

    where = "stdin" if name == "-" else name
    try:
        if name == "-":
            raw = sys.stdin.buffer.read(SUBJECT_FILE_LIMIT + 1)
        else:
            with open(name, "rb") as handle:
                raw = handle.read(SUBJECT_FILE_LIMIT + 1)
    except OSError as exc:
        raise BadInput(f"--subject-file {where}: cannot read it ({exc.strerror})") from None
    if len(raw) > SUBJECT_FILE_LIMIT:
        raise BadInput(f"--subject-file {where}: more than {SUBJECT_FILE_LIMIT} bytes; it holds one KIND=VALUE line")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"--subject-file {where}: not UTF-8 text") from None
    lines = [line for line in text.split("\n") if line.strip("\r ")]
    if len(lines) != 1:
        raise BadInput(f"--subject-file {where}: holds {len(lines)} non-empty line(s); expected one KIND=VALUE line")
    return lines[0].rstrip("\r")


@click.command("erase")
@click.argument("tenant_id")
@click.option("--subject", metavar="KIND=VALUE",
              help="For interactive use only: the data subject, e.g. email=pessoa@exemplo.com (kinds: see the "
                   "LGPD rules). Every user of this machine can read it in the process list; scripts use "
                   "--subject-file.")
@click.option("--subject-file", "subject_file", metavar="FILE|-",
              help="A file (or - for stdin) holding one KIND=VALUE line: the value never appears in any "
                   "process's command line.")
@click.option("--rewrite", is_flag=True, help="Also rewrite every restore point that holds the person.")
@click.option("--dry-run", is_flag=True, help="Resolve and count only; change nothing, write no ledger entry.")
@click.option("--yes", is_flag=True, help="Erase without asking (required when stdin is not a terminal).")
@click.option("--wait", "wait_seconds", type=float, default=0, show_default=True,
              help="Seconds to wait for the tenant's lease.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document (the certificate) on stdout.")
def erase(tenant_id: str, subject: str | None, subject_file: str | None, rewrite: bool, dry_run: bool, yes: bool,
          wait_seconds: float, as_json: bool) -> None:
    """Erase a person from the tenant's live data and record it in the erasure ledger.

    The subject's value is checked for its kind (an e-mail, a phone number, a contact id of
    digits or a UUID) before anything runs; anything else exits 2 with nothing touched."""
    from .engine.errors import BadInput
    from .engine.lgpd.erase import run_erase
    from .engine.lgpd.rules import load_rules, parse_subject

    validate_tenant_id(tenant_id)
    if (subject is None) == (subject_file is None):
        raise BadInput("give the data subject with --subject-file FILE|- (or, interactively, --subject KIND=VALUE), "
                       "not both")
    if subject_file is not None:
        subject = read_subject_file(subject_file)
    rules = load_rules()
    kind, _ = parse_subject(subject, rules)  # bad input before any question
    if rewrite and dry_run:
        raise BadInput("--rewrite and --dry-run do not go together")
    if not dry_run:
        confirm_replacement(f"Erase a {kind} subject from tenant {tenant_id}"
                            + (" and rewrite its restore points" if rewrite else "") + "?", yes)
    settings = ready_settings()
    reporter = TerminalReporter()
    if rewrite:  # every location that holds restore points can be rewritten, or nothing is erased
        from .engine.lgpd.rewrite import rewrite_locations
        rewrite_locations(settings, tenant_id)
    cert = run_erase(settings, tenant_id, subject, dry_run, reporter, wait_seconds, rules)
    if rewrite:
        from .engine.lgpd.rewrite import run_rewrite
        run_rewrite(settings, tenant_id, cert, reporter, wait_seconds)
    if as_json:
        emit_json(cert.to_json())
        return
    doc = cert.to_json()
    click.echo(f"erasure certificate: tenant {tenant_id}, {kind} subject {cert.reference}"
               + (" (dry run: nothing changed)" if dry_run else ""))
    click.echo(f"persons: {cert.persons}; erased at {doc['erased_at']}")
    for table, count in sorted(cert.erased.database.items()):
        click.echo(f"  postgresql {table}: {count} row(s)")
    click.echo(f"  redis: {cert.erased.redis} key(s)")
    for bucket, count in sorted(cert.erased.objects.items()):
        click.echo(f"  object_storage {bucket}: {count} object(s)")
    click.echo(f"  appdata: {cert.erased.appdata} file(s)")
    for skipped in cert.erased.skipped:
        click.echo(f"  skipped (tenant has no {skipped})")
    for point in cert.rewritten:
        click.echo(f"rewritten restore point {point['session']} in {point['location']} (was "
                   f"{point['old_manifest'][:8]}, now {point['new_manifest'][:8]})")
    for where in doc["locations"]:
        held = where["may_still_hold"]
        state = ("rewritten: holds none of the person's data" if where["rewritten"]
                 else "not listed: " + where.get("error", "?") if held is None
                 else f"restore points that may still hold the person (taken before the erasure): "
                      f"{', '.join(held) or 'none'}; every restore re-applies the ledger")
        click.echo(f"{where['location']}: {state}")


@click.command("offboard")
@click.argument("tenant_id")
@click.option("--export", "export", type=click.Path(file_okay=False, path_type=Path),
              help="Write the newest restore point (ledger-filtered) to this folder first.")
@click.option("--yes", is_flag=True, help="Off-board without asking (required when stdin is not a terminal).")
@click.option("--wait", "wait_seconds", type=float, default=0, show_default=True,
              help="Seconds to wait for the tenant's lease.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def offboard(tenant_id: str, export: Path | None, yes: bool, wait_seconds: float, as_json: bool) -> None:
    """Erase a departed tenant everywhere and crypto-shred its backups (irreversible)."""
    from .engine.lgpd.offboard import run_offboard

    validate_tenant_id(tenant_id)
    confirm_replacement(f"Off-board tenant {tenant_id}: erase its data and destroy its backups for good?", yes)
    result = run_offboard(ready_settings(), tenant_id, export, TerminalReporter(), wait_seconds)
    if as_json:
        emit_json(result.to_json())
        return
    if result.exported_to:
        click.echo(f"exported session {result.exported_session} to {result.exported_to}")
    click.echo(f"tenant {tenant_id}: live data erased; destroyed {', '.join(result.keys_destroyed) or 'no keys'}; "
               f"repository deleted; status {result.status}")
    if result.pitr.get("statement"):
        click.echo(f"point-in-time recovery: {result.pitr['statement']}")
