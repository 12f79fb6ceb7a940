"""`tenants offboard ID [--export DIR] --yes`: the end of a tenant, crypto-shredded.

Refused (exit 2, nothing touched) for an active tenant (status `ativo`: mark it `cancelado` or
`inativo` first), for one already off-boarded, and while a legal hold runs (a compliance
snapshot under a hold marker, engine/retention.py place_hold). Then, under the
tenant's lease:

1. `--export DIR`: the newest restore point restored into the tenant's scratch names through
   the normal restore path (so the erasure ledger is re-applied), then written to DIR
   (`postgresql.dump` in pg_dump custom format, `objects/<bucket suffix>/<key>`, `redis.jsonl`
   (key under the tenant's own name, type, pttl, base64 DUMP), `rabbitmq/definitions.json` and
   `rabbitmq/messages.jsonl` (read without acknowledging), `appdata/`, `manifest.json`); the
   scratch is erased afterwards. DIR is resolved once (a linked DIR exports into its target);
   an object key whose file would not be inside it (absolute, `.`/`..`/empty segments, a link on
   the way, a key that is also another key's folder) is refused, listed in `export_refused`, and
   never written; files are created with O_EXCL|O_NOFOLLOW;
2. the tenant's live data is erased in every service (database and roles, buckets with every
   version, Redis namespace, RabbitMQ vhost, application-data folder);
3. crypto-shredding: the wrapped repository password and the ledger key are deleted from the
   main database (the only things that open the repository or link a ledger hash to a
   person), then their stashed copies beside the repositories (key_stash.py, ledger_stash.py)
   at every location, then the repository itself at every location — the off-site copy
   through its admin path (KRYONIX_REPO_SECONDARY_ADMIN; when a copy exists and no admin path
   is configured, off-boarding is refused before anything is touched). A copy of a
   repository made earlier (a disk snapshot) can no longer be opened by anything the product
   holds;
4. the registry status becomes `encerrado` (its Dagster partition is then removed by the
   partition sensor), and the audit row says what was done.

Every step is idempotent, so an interrupted off-boarding is finished by running it again.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

import pika.exceptions

from .. import key_stash, locations, pg, registry, services
from ..config import Settings
from ..erasure import _erase
from ..errors import BadInput, OperationFailed, one_line
from ..manifest import find_manifest
from ..naming import (TenantNames, ledger_stash_file_tenant, names_for, rename_redis_key, repository_in,
                      scratch_names_for, validate_tenant_id, vault_file_tenant)
from ..operation import tenant_operation
from ..plans import plan_for
from ..reporting import NullReporter, Reporter
from ..repository import Restic, restic_location
from ..retention import legal_hold_ids
from ..tenant_repository import _marker_path, key_folder, local_root, open_repository
from . import ledger, ledger_stash

OFFBOARDED = registry.OFFBOARDED


@dataclass
class OffboardResult:
    tenant_id: str
    started_at: datetime
    exported_to: str | None = None
    exported_session: str | None = None
    export_refused: list[dict] = field(default_factory=list)  # object keys never written (outside DIR)
    live_data_erased: bool = False
    keys_destroyed: list[str] = field(default_factory=list)
    repository_deleted: bool = False
    repositories_deleted: list[str] = field(default_factory=list)  # primary, secondary-admin
    stash_files_removed: int = 0
    status: str = ""
    pitr: dict = field(default_factory=dict)  # until when pgBackRest still holds the database, encrypted
    duration_seconds: float = 0.0

    def to_json(self) -> dict:
        return {"tenant": self.tenant_id, "exported_to": self.exported_to, "exported_session": self.exported_session,
                "export_refused": self.export_refused,
                "live_data_erased": self.live_data_erased, "keys_destroyed": self.keys_destroyed,
                "repository_deleted": self.repository_deleted, "repositories_deleted": self.repositories_deleted,
                "stash_files_removed": self.stash_files_removed, "status": self.status,
                "pitr_retention": self.pitr, "duration_seconds": self.duration_seconds}


def _refuse(settings: Settings, tenant_id: str, repo: Restic | None) -> None:
    tenant = registry.get_tenant(settings, tenant_id)
    if tenant is None:
        raise BadInput(f"tenant {tenant_id} is not registered")
    if tenant.status == OFFBOARDED:
        raise BadInput(f"tenant {tenant_id} is already off-boarded")
    if tenant.active:
        raise BadInput(f"tenant {tenant_id} is ativo: off-boarding is only for a tenant that left "
                       f"(`tenants set-status {tenant_id} cancelado` first)")
    if _copy_exists(settings, tenant_id) and not settings.repo_secondary_admin:
        raise BadInput(f"tenant {tenant_id} has an off-site copy: off-boarding must delete it through the copy's "
                       "admin path (set KRYONIX_REPO_SECONDARY_ADMIN); nothing was changed")
    if repo is not None:
        plan, _ = plan_for(tenant.plano)
        held = legal_hold_ids(repo, plan, repo.snapshots())
        if held:
            raise BadInput(f"tenant {tenant_id}: a legal hold runs ({len(held)} compliance snapshot(s) under a "
                           "hold marker): off-boarding is refused until it ends; nothing was changed")


def _export(settings: Settings, tenant_id: str, repo: Restic, folder: Path, report: Reporter) -> tuple[str, list[dict]]:
    """The newest restore point, ledger-filtered, written to `folder` (resolved; through the scratch
    names): its session and the object keys refused because they would land outside `folder`."""
    from ..drill import drilled_tiers
    from ..erasure import erase_scratch
    from ..restore import restore_tiers

    manifest = find_manifest(repo, "latest")
    if manifest is None:
        raise OperationFailed(f"tenant {tenant_id}: no restore point to export")
    scratch = scratch_names_for(settings, tenant_id)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    erase_scratch(settings, scratch)
    try:
        from ..tiers import TIERS
        restore_tiers(settings, names_for(settings, tenant_id), scratch, repo, manifest,
                      drilled_tiers(manifest, TIERS), report, preflight=False)
        refused = _write_export(settings, names_for(settings, tenant_id), scratch, folder)
        (folder / "manifest.json").write_bytes(manifest.to_json())
    finally:
        erase_scratch(settings, scratch)
    for item in refused:
        report.warn(f"tenant {tenant_id}: object {item['key']!r} of bucket {item['bucket']} not exported: its file "
                    "would not be inside the export folder")
    return manifest.session_id, refused


def _write_export(settings: Settings, source: TenantNames, scratch: TenantNames, folder: Path) -> list[dict]:
    """The scratch restore written to `folder` (already resolved): every tier. Returns the object
    keys refused because their file would land outside `folder` (never written)."""
    from .. import procs
    if pg.database_exists(settings.pg_dsn, scratch.database):
        args, env = pg.tool_args(settings.pg_dsn, scratch.database)
        procs.run(["pg_dump", "--format=custom", "--no-owner", "--no-password", "-f", str(folder / "postgresql.dump"),
                   *args], env=env, check=True, capture_output=True)
    refused = _export_objects(settings, scratch, folder)
    _export_redis(settings, source, scratch, folder)
    _export_rabbitmq(settings, source, scratch, folder)
    if scratch.app_data_dir.is_dir() and not scratch.app_data_dir.is_symlink():
        shutil.copytree(scratch.app_data_dir, folder / "appdata", symlinks=True, dirs_exist_ok=True)
    return refused


def export_target(folder: Path, suffix: str, key: str) -> Path | None:
    """Where object `key` of bucket `suffix` goes under `folder` (resolved), or None when the key
    cannot be a file inside it: absolute, `.`/`..`/empty segments, or a link on the way out."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") or "\0" in p for p in parts):
        return None
    target = folder / "objects" / suffix / Path(*parts)
    resolved = target.resolve()
    if resolved != target or not resolved.is_relative_to(folder):
        return None
    return target


def _export_objects(settings: Settings, scratch: TenantNames, folder: Path) -> list[dict]:
    client = services.s3_client(settings)
    refused: list[dict] = []
    for bucket in [b["Name"] for b in client.list_buckets().get("Buckets", []) if scratch.owns_bucket(b["Name"])]:
        suffix = bucket[len(scratch.bucket_prefix):]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                target = export_target(folder, suffix, item["Key"])
                if target is not None:
                    try:
                        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                        target = export_target(folder, suffix, item["Key"])  # no link planted meanwhile
                        if target is not None:
                            # O_NOFOLLOW | O_EXCL: never through a link, never over another key's file
                            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                            with os.fdopen(fd, "wb") as out:
                                client.download_fileobj(bucket, item["Key"], out)
                            continue
                    except (FileExistsError, NotADirectoryError, IsADirectoryError):
                        pass  # "a" and "a/b" both keys: the second cannot be a file
                refused.append({"bucket": suffix, "key": item["Key"]})
    return refused


def _export_redis(settings: Settings, source: TenantNames, scratch: TenantNames, folder: Path) -> int:
    """`redis.jsonl`: one line per key of the scratch namespace, under the tenant's own key name."""
    from ..tiers.redis_keys import scan_keys
    client = services.redis_client(settings)
    keys = scan_keys(client, scratch.redis_match, scratch.backup_flag_key.encode())
    if not keys:
        return 0
    written = 0
    with open(folder / "redis.jsonl", "x", encoding="utf-8") as out:
        for start in range(0, len(keys), 500):
            batch = keys[start:start + 500]
            pipe = client.pipeline(transaction=False)
            for key in batch:
                pipe.type(key)
                pipe.pttl(key)
                pipe.dump(key)
            replies = pipe.execute()
            for i, key in enumerate(batch):
                kind, pttl, payload = replies[3 * i:3 * i + 3]
                if payload is None:
                    continue  # expired since the restore
                own = rename_redis_key(key, scratch, source)
                line = {"type": kind.decode() if isinstance(kind, bytes) else kind, "pttl": pttl,
                        "dump": base64.b64encode(payload).decode()}
                try:
                    line["key"] = own.decode("utf-8")
                except UnicodeDecodeError:
                    line["key_base64"] = base64.b64encode(own).decode()
                out.write(json.dumps(line, sort_keys=True, ensure_ascii=False) + "\n")
                written += 1
    return written


def _export_rabbitmq(settings: Settings, source: TenantNames, scratch: TenantNames, folder: Path) -> int:
    """`rabbitmq/definitions.json` (the vhost named as the tenant's own) and `rabbitmq/messages.jsonl`
    (read without acknowledging: every message stays in the scratch queue, in order)."""
    from ..tiers.rabbitmq import capture_messages, uncapturable_reason, vhost_definitions
    api = services.RabbitMQApi(settings)
    if not api.vhost_exists(scratch.vhost):
        return 0
    definitions = vhost_definitions(api, scratch.vhost)
    for kind in definitions.values():
        for item in kind:
            if item.get("vhost") == scratch.vhost:
                item["vhost"] = source.vhost
    skipped = {q["name"] for q in api.queues(scratch.vhost) if uncapturable_reason(q)}
    queues = [q["name"] for q in definitions["queues"] if q["name"] not in skipped]
    try:
        messages, _ = capture_messages(settings, scratch.vhost, queues)
    except pika.exceptions.AMQPError as exc:
        raise OperationFailed(f"tenant {source.tenant_id}: reading the exported messages failed: "
                              f"{one_line(repr(exc))}") from None
    (folder / "rabbitmq").mkdir(mode=0o700)
    (folder / "rabbitmq" / "definitions.json").write_text(
        json.dumps({"vhost": source.vhost, **definitions}, sort_keys=True, ensure_ascii=False, indent=1))
    with open(folder / "rabbitmq" / "messages.jsonl", "x", encoding="utf-8") as out:
        for message in messages:
            out.write(json.dumps(message, sort_keys=True, ensure_ascii=False) + "\n")
    return len(messages)


def _copy_exists(settings: Settings, tenant_id: str) -> bool:
    """An off-site copy was recorded, or the workers' path to the copy shows the repository or a
    stashed record of the tenant (an erasure stashes its ledger there even before any copy)."""
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM tenants.offsite_copies WHERE cliente_id = %s", (tenant_id,))
        if cur.fetchone():
            return True
    if not settings.repo_secondary:
        return False
    where = locations.location(settings, locations.SECONDARY)
    folder = key_folder(settings, restic_location(repository_in(where.root, tenant_id)), where.access_key,
                        where.secret_key)
    try:
        if folder is None or folder.names():  # a backend we cannot look into: assume a copy
            return True
        stashed = key_stash.vault_folder(settings, where).names()
    except OSError:
        return True
    return any(tenant_id in (vault_file_tenant(n), ledger_stash_file_tenant(n)) for n in stashed)


def _shred_places(settings: Settings) -> list[locations.Location]:
    """Every location that may hold the tenant's repository and stashes, reachable with delete rights."""
    places = [locations.location(settings, locations.PRIMARY)]
    if settings.repo_secondary_admin:
        places.append(locations.location(settings, locations.SECONDARY_ADMIN))
    return places


def _remove_stashes(settings: Settings, tenant_id: str, where: locations.Location) -> int:
    """The tenant's wrapped passwords and ledgers stashed beside the repositories at `where`."""
    try:
        return key_stash.prune(settings, tenant_id, where, None) + ledger_stash.remove(settings, tenant_id, where)
    except OSError as exc:
        raise OperationFailed(f"tenant {tenant_id}: the key stash at the {where.kind} location could not be "
                              f"removed ({one_line(str(exc), 160)}); run off-boarding again") from None


def _delete_repository(settings: Settings, location: str, access_key: str | None = None,
                       secret_key: str | None = None) -> None:
    root = local_root(location)
    if root is not None:
        shutil.rmtree(root, ignore_errors=True)
        if root.exists():
            raise OperationFailed(f"repository {location} could not be deleted")
    elif location.startswith("s3:"):
        rest = location[len("s3:"):]
        url = urlparse(rest if "://" in rest else f"https://{rest}")
        bucket, _, prefix = url.path.lstrip("/").partition("/")
        prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        client = services.client_for(f"{url.scheme}://{url.netloc}", access_key or settings.repo_access_key,
                                     secret_key or settings.repo_secret_key, settings.s3_region)
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=item["Key"])
    else:
        raise OperationFailed(f"repository {location}: cannot delete this backend; the keys are destroyed already")
    _marker_path(settings, location).unlink(missing_ok=True)


def destroy_keys(settings: Settings, tenant_id: str) -> list[str]:
    """Delete every wrapped secret of the tenant: repository password(s) and the ledger key."""
    destroyed = []
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM tenants.backup_keys WHERE cliente_id = %s", (tenant_id,))
        if cur.rowcount:
            destroyed.append("repository password")
        # a secondary repository's password (off-site copy), wherever a later step keeps it
        cur.execute("SELECT table_name FROM information_schema.columns WHERE table_schema = 'tenants' "
                    "AND column_name = 'cliente_id' AND table_name LIKE '%%keys' "
                    "AND table_name NOT IN ('backup_keys', 'lgpd_ledger_keys')")
        for (table,) in cur.fetchall():
            from psycopg2 import sql
            cur.execute(sql.SQL("DELETE FROM tenants.{} WHERE cliente_id = %s").format(sql.Identifier(table)),
                        (tenant_id,))
            if cur.rowcount:
                destroyed.append(table)
    if ledger.destroy_key(settings, tenant_id):
        destroyed.append("ledger key")
    return destroyed


def _pitr_hold(settings: Settings, tenant_id: str, gone_at: datetime) -> dict:
    """The certificate's word on pgBackRest: its repository is shared by every tenant and cannot be
    crypto-shredded per tenant, so it says until when the database is still held there, encrypted.
    (`restore --at` refuses an off-boarded tenant meanwhile.)"""
    from ..pitr.archive import database_hold

    try:
        return database_hold(settings, gone_at)
    except Exception as exc:  # noqa: BLE001 - the off-boarding is done; say what could not be read
        return {"configured": None, "statement": f"tenant {tenant_id}: pgBackRest's retention could not be read "
                                                 f"({type(exc).__name__}: {one_line(str(exc), 200)})"}


def run_offboard(settings: Settings, tenant_id: str, export: Path | None = None, report: Reporter | None = None,
                 wait_seconds: float = 0) -> OffboardResult:
    report = report or NullReporter()
    validate_tenant_id(tenant_id)
    if export is not None and export.exists() and any(export.iterdir()):
        raise BadInput(f"--export {export}: the folder is not empty")
    if export is not None:
        export = export.resolve()  # once: a linked DIR is fine, its target is the export
    names = names_for(settings, tenant_id)
    result = OffboardResult(tenant_id, datetime.now(timezone.utc))
    scratch = scratch_names_for(settings, tenant_id)
    with tenant_operation(settings, tenant_id, "offboard", wait_seconds=wait_seconds,
                          also_lease=(scratch.tenant_id,) if export else ()) as op:
        repo = open_repository(settings, tenant_id)
        _refuse(settings, tenant_id, repo)
        if export is not None and repo is not None:
            report.info(f"tenant {tenant_id}: exporting the newest restore point to {export}")
            result.exported_session, result.export_refused = _export(settings, tenant_id, repo, export, report)
            result.exported_to = str(export)
        op.ensure_lease()
        report.info(f"tenant {tenant_id}: erasing live data in every service")
        _erase(settings, names)
        result.live_data_erased = True
        result.keys_destroyed = destroy_keys(settings, tenant_id)
        report.info(f"tenant {tenant_id}: destroyed {', '.join(result.keys_destroyed) or 'no keys (none left)'}")
        places = _shred_places(settings)
        for where in places:  # the stashed copies of the keys just destroyed …
            result.stash_files_removed += _remove_stashes(settings, tenant_id, where)
        for where in places:  # … then the repositories, at every location
            location = names.repository if where.kind == locations.PRIMARY else repository_in(where.root, tenant_id)
            _delete_repository(settings, location, where.access_key, where.secret_key)
            result.repositories_deleted.append(where.kind)
        if settings.repo_secondary_admin:
            with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
                cur.execute("DELETE FROM tenants.offsite_copies WHERE cliente_id = %s", (tenant_id,))
        result.repository_deleted = True
        result.status = registry.set_status(settings, tenant_id, OFFBOARDED).status
        result.pitr = _pitr_hold(settings, tenant_id, datetime.now(timezone.utc))
        result.duration_seconds = op.seconds
        op.audit = {"details": result.to_json() | {"exported_to": bool(result.exported_to)}}
    return result
