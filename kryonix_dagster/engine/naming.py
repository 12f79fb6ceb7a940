"""The isolation contract: every per-tenant name is derived here and only here.

A tenant id matches ``^[a-z0-9]{1,32}$``. Ids carry no separator characters, so the
separators used below (``_``, ``-``, ``:``) make one tenant's names never a prefix of
another's: ``cliente-1-`` does not match ``cliente-10-media``.

Restore drills restore into a scratch tenant whose names have their own prefixes
(``kryonix_drill_{token}``, ``drill-{token}-*``, ``drill:{token}:*``, ``/drill_{token}``,
``drill_{token}/``): no tenant id yields a name that starts like that, and the scratch id
``drill-{token}`` is not a tenant id, so it can never be registered.

The restore machinery's names are derived here as well: the scratch vhost a RabbitMQ restore
tries definitions in (``<vhost>~restore``; ``~`` is in no tenant id) and the app-data swap's
folders beside the live one (``.<folder>.previous``, ``.<folder>.restoring-*``), which start
with a dot and so are never a tenant's folder.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInput

TENANT_ID_PATTERN = re.compile(r"[a-z0-9]{1,32}")
# A tenant's naming form inside any name: `cliente` + a separator + an id, not followed by
# another id character (`cliente_1` in `kryonix_cliente_1_app`, `cliente-1-media`, `cliente:1:`).
_TENANT_FORM = re.compile(r"cliente[_:.-]([a-z0-9]{1,32})(?![a-z0-9])")
_STAGING_VHOST_SUFFIX = "~restore"
PLANS = ("basic", "pro", "enterprise")
STATUSES = ("ativo", "inativo", "cancelado", "encerrado")  # encerrado: off-boarded, crypto-shredded
BACKUP_TYPES = ("full", "incremental")


def validate_tenant_id(raw: object) -> str:
    """Return the id if it obeys the contract, else raise BadInput (exit 2)."""
    if not isinstance(raw, str) or not TENANT_ID_PATTERN.fullmatch(raw):
        shown = repr(raw) if isinstance(raw, str) and len(raw) <= 40 else "the given id"
        raise BadInput(f"invalid tenant id {shown}: must match ^[a-z0-9]{{1,32}}$")
    return raw


def validate_plan(raw: str) -> str:
    if raw not in PLANS:
        raise BadInput(f"unknown plan {raw!r}: expected one of {', '.join(PLANS)}")
    return raw


def validate_status(raw: str) -> str:
    if raw not in STATUSES:
        raise BadInput(f"unknown status {raw!r}: expected one of {', '.join(STATUSES)}")
    return raw


@dataclass(frozen=True)
class TenantNames:
    """All names of one tenant, in every service."""

    tenant_id: str
    database: str
    role_prefix: str
    bucket_prefix: str
    redis_prefix: str
    vhost: str
    app_data_dir: Path
    repository: str
    scratch: bool = False  # a restore drill's scratch tenant (see scratch_names)

    @property
    def redis_match(self) -> str:
        """SCAN MATCH pattern; safe because ids contain no glob characters."""
        return f"{self.redis_prefix}*"

    @property
    def restoring_database(self) -> str:
        """Where a full restore loads before it swaps in."""
        return f"{self.database}__restoring"

    @property
    def previous_database(self) -> str:
        """The replaced database, kept until the swap is done."""
        return f"{self.database}__previous"

    @property
    def staging_vhost(self) -> str:
        """The scratch vhost a RabbitMQ restore loads definitions into first (`~` is in no tenant id)."""
        return f"{self.vhost}{_STAGING_VHOST_SUFFIX}"

    @property
    def previous_app_data_dir(self) -> Path:
        """The replaced app-data folder during a restore swap (same parent: a rename)."""
        return self.app_data_dir.parent / f".{self.local_name}.previous"

    @property
    def app_data_journal(self) -> Path:
        """The swap journal earlier versions wrote; only ever removed now."""
        return self.app_data_dir.parent / f".{self.local_name}.swap.json"

    @property
    def app_data_staging_prefix(self) -> str:
        """Name prefix of the folders an app-data restore builds beside the live one."""
        return f".{self.local_name}.restoring-"

    @property
    def local_name(self) -> str:
        """The tenant's name in local folders and staging files (`cliente_{id}`, a scratch's own)."""
        return self.app_data_dir.name

    def restore_point_name(self, session_id: str) -> str:
        """The PostgreSQL restore point a session creates (`pg_create_restore_point`)."""
        return f"kryonix_{self.tenant_id}_{session_id}"

    @property
    def backup_flag_key(self) -> str:
        return f"{self.redis_prefix}backup:in_progress"

    def owns_bucket(self, bucket: str) -> bool:
        return bucket.startswith(self.bucket_prefix) and len(bucket) > len(self.bucket_prefix)

    def owns_role(self, role: str) -> bool:
        return role.startswith(self.role_prefix) and len(role) > len(self.role_prefix)

    def owns_redis_key(self, key: bytes | str) -> bool:
        prefix = self.redis_prefix.encode() if isinstance(key, bytes) else self.redis_prefix
        return key.startswith(prefix)

    def bucket(self, suffix: str) -> str:
        return f"{self.bucket_prefix}{suffix}"

    def role(self, suffix: str) -> str:
        return f"{self.role_prefix}{suffix}"


def foreign_tenant_ids(name: str, owner: TenantNames) -> set[str]:
    """Ids of other tenants whose naming form (`cliente_ID`, `cliente-ID`, `cliente:ID`,
    `cliente.ID`) the name carries; empty when it names no tenant but `owner`."""
    return {found for found in _TENANT_FORM.findall(name) if found != owner.tenant_id}


def tenant_names(tenant_id: str, app_data_root: Path, repo_root: str) -> TenantNames:
    tid = validate_tenant_id(tenant_id)
    return TenantNames(
        tenant_id=tid,
        database=f"kryonix_cliente_{tid}",
        role_prefix=f"kryonix_cliente_{tid}_",
        bucket_prefix=f"cliente-{tid}-",
        redis_prefix=f"cliente:{tid}:",
        vhost=f"/cliente_{tid}",
        app_data_dir=Path(app_data_root) / f"cliente_{tid}",
        repository=repository_in(repo_root, tid),
    )


def repository_in(repo_root: str, tenant_id: str) -> str:
    """A tenant's repository under a repository root (the primary's, or the off-site copy's)."""
    return f"{repo_root.rstrip('/')}/cliente_{validate_tenant_id(tenant_id)}"


# Beside the tenants' repositories (outside restic's layout): the key vault's stash of wrapped
# passwords (engine/key_stash.py), one file per tenant and version, `<id>-<hash>.json`.
VAULT_FOLDER = "kryonix-vault"


def vault_file_name(tenant_id: str, digest: str) -> str:
    return f"{validate_tenant_id(tenant_id)}-{digest}.json"


def ledger_stash_file_name(tenant_id: str, digest: str) -> str:
    """A tenant's erasure ledger stashed beside its repositories (engine/lgpd/ledger_stash.py)."""
    return f"ledger-{validate_tenant_id(tenant_id)}-{digest}.json"


def ledger_stash_file_tenant(name: str) -> str | None:
    match = re.fullmatch(r"ledger-([a-z0-9]{1,32})-[0-9a-f]{16}\.json", name)
    return match.group(1) if match else None


def vault_file_tenant(name: str) -> str | None:
    """The tenant id of a stash file name, None for anything else."""
    match = re.fullmatch(r"([a-z0-9]{1,32})-[0-9a-f]{16}\.json", name)
    return match.group(1) if match else None


def names_for(settings, tenant_id: str) -> TenantNames:
    """Names of a tenant under the given Settings."""
    return tenant_names(tenant_id, settings.app_data_dir, settings.repo)


SCRATCH_TOKEN = re.compile(r"[0-9a-f]{12}")


def scratch_token(tenant_id: str) -> str:
    """Stable per drilled tenant, so the next drill erases what a killed one left behind."""
    return hashlib.sha256(validate_tenant_id(tenant_id).encode()).hexdigest()[:12]


def scratch_id(tenant_id: str) -> str:
    """The id of the scratch tenant a drill of `tenant_id` uses: `-` makes it no tenant id."""
    return f"drill-{scratch_token(tenant_id)}"


def scratch_names(token: str, app_data_root: Path) -> TenantNames:
    """Names of a drill's scratch tenant: prefixes no tenant's names have. A scratch tenant
    has no backup repository."""
    if not SCRATCH_TOKEN.fullmatch(token):
        raise BadInput(f"invalid scratch token {token!r}: must match ^[0-9a-f]{{12}}$")
    return TenantNames(
        tenant_id=f"drill-{token}",  # = scratch_id(...)
        database=f"kryonix_drill_{token}",
        role_prefix=f"kryonix_drill_{token}_",
        bucket_prefix=f"drill-{token}-",
        redis_prefix=f"drill:{token}:",
        vhost=f"/drill_{token}",
        app_data_dir=Path(app_data_root) / f"drill_{token}",
        repository="",
        scratch=True,
    )


def scratch_names_for(settings, tenant_id: str) -> TenantNames:
    """The scratch tenant a restore drill of `tenant_id` restores into."""
    return scratch_names(scratch_token(tenant_id), settings.app_data_dir)


def is_scratch(names: TenantNames) -> bool:
    """True only for names exactly as scratch_names builds them (a forged flag is not enough)."""
    token = names.tenant_id.removeprefix("drill-")
    return (names.scratch and names.tenant_id.startswith("drill-") and SCRATCH_TOKEN.fullmatch(token) is not None
            and names == scratch_names(token, names.app_data_dir.parent))


def rename_bucket(bucket: str, source: TenantNames, target: TenantNames) -> str:
    """Map a source tenant's bucket to the target tenant's bucket of the same suffix."""
    if not source.owns_bucket(bucket):
        raise ValueError(f"bucket {bucket!r} does not belong to tenant {source.tenant_id}")
    return target.bucket_prefix + bucket[len(source.bucket_prefix):]


def rename_redis_key(key: bytes, source: TenantNames, target: TenantNames) -> bytes:
    prefix = source.redis_prefix.encode()
    if not key.startswith(prefix):
        raise ValueError(f"key does not belong to tenant {source.tenant_id}")
    return target.redis_prefix.encode() + key[len(prefix):]


def rename_role(role: str, source: TenantNames, target: TenantNames) -> str:
    if not source.owns_role(role):
        raise ValueError(f"role {role!r} does not belong to tenant {source.tenant_id}")
    return target.role_prefix + role[len(source.role_prefix):]


# The vhost Dagster's Celery executor uses as its broker on the product's RabbitMQ. Tenant
# vhosts are `/cliente_{id}` and drill scratch vhosts `/drill_{token}`: no tenant id produces it.
DAGSTER_BROKER_VHOST = "/kryonix_dagster"
