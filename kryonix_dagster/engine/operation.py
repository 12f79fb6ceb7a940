"""One frame for every tenant operation: lease, timing, audit row on every path, error mapping.

    with tenant_operation(settings, tenant_id, "forget", wait_seconds=w) as op:
        ...                               # the work; op.ensure_lease() before anything final
        op.audit["details"] = {...}       # what the audit row should carry besides the basics
        op.fail("what went wrong")        # a failure that returns instead of raising (optional)

- Leases: the tenant's, plus `also_lease` (a restore's target), taken in sorted order so two
  operations that need the same pair never deadlock; released on every path, heartbeats
  stopped first. With a tenant's lease taken, what a killed session of it left in the backup
  staging folder is removed (nothing of that tenant can be using it). A lease refused (TenantBusy) raises before anything ran: no audit row.
- Timing: `op.started_at` (UTC) and `op.seconds`; the audit row's `details.lease_acquired_at`
  is when the lease was taken, by the main database's clock.
- Audit: one row per operation, success or failure, written after the leases are released.
  A failed audit insert is logged and never masks the operation's own error or result.
- Errors: a KryonixError passes through unchanged (its message already says what and where);
  anything else becomes OperationFailed("tenant X: <operation>: Type: message").
"""
from __future__ import annotations

import contextlib
import logging
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from . import audit
from .config import Settings
from .errors import KryonixError, OperationFailed, one_line
from .lease import Lease
from .manifest import new_session_id
from .naming import TENANT_ID_PATTERN, names_for
from .reporting import Stopwatch

log = logging.getLogger(__name__)


@dataclass
class Operation:
    """What the body of `tenant_operation` sees and fills in."""

    tenant_id: str
    name: str
    lease_id: str
    started_at: datetime
    leases: dict[str, Lease] = field(default_factory=dict)
    success: bool | None = None  # None: decided by how the body ends
    error: str | None = None
    audit: dict[str, Any] = field(default_factory=dict)  # extra AuditRecord fields
    _watch: Stopwatch = field(default_factory=Stopwatch, repr=False)

    @property
    def seconds(self) -> float:
        return self._watch.seconds

    @property
    def lease_lost(self) -> bool:
        return any(lease.lost for lease in self.leases.values())

    def ensure_lease(self) -> None:
        """Fenced check of every lease held (main database, now); raises LeaseLost."""
        for lease in self.leases.values():
            lease.ensure_held()

    def stop_heartbeats(self) -> None:
        for lease in self.leases.values():
            lease.stop_heartbeat()

    def fail(self, error: str) -> None:
        self.success, self.error = False, error


def _map_error(op: Operation, exc: BaseException) -> BaseException:
    if isinstance(exc, KryonixError):
        return exc
    if isinstance(exc, Exception):
        log.exception("tenant %s: %s", op.tenant_id, op.name)
        return OperationFailed(f"tenant {op.tenant_id}: {op.name}: {type(exc).__name__}: {one_line(str(exc))}")
    return exc  # KeyboardInterrupt, SystemExit: recorded, then passed on as they are


def _release(op: Operation) -> None:
    for tenant, lease in op.leases.items():
        try:
            lease.release()
        except Exception as exc:  # it expires after one TTL anyway
            log.error("tenant %s: %s: lease not released (%s); it expires after its TTL",
                      tenant, op.name, type(exc).__name__)


def _write_audit(settings: Settings, op: Operation, audit_tenant: str) -> None:
    extra = dict(op.audit)
    held = op.leases.get(op.tenant_id)
    if held is not None and held.acquired_at is not None:
        # the main database's clock: two operations' lease times compare even across hosts
        extra["details"] = {**extra.get("details", {}), "lease_acquired_at": held.acquired_at.isoformat()}
    record = audit.AuditRecord(
        cliente_id=extra.pop("cliente_id", audit_tenant), operation=op.name, started_at=op.started_at,
        success=bool(op.success), finished_at=datetime.now(timezone.utc), duration_seconds=op.seconds,
        error=op.error, **extra,
    )
    try:
        audit.record(settings, record)
    except Exception as exc:  # the operation's own outcome matters more than its audit row
        log.error("tenant %s: %s: audit row not written: %s: %s", record.cliente_id, op.name,
                  type(exc).__name__, one_line(str(exc), 200))


def sweep_backup_staging(settings: Settings, tenant_id: str) -> list[Path]:
    """Remove what a killed session of the tenant left in the backup staging folder (objects,
    the compliance tier's LGPD CSVs). Called with the tenant's lease held: no live session of
    the tenant can be using them."""
    prefix = f"{names_for(settings, tenant_id).local_name}-"
    staging = Path(settings.state_dir) / "staging"
    removed = [leftover for leftover in staging.glob(f"{prefix}*") if leftover.is_dir()] if staging.is_dir() else []
    for leftover in removed:
        shutil.rmtree(leftover, ignore_errors=True)
        log.warning("tenant %s: removed %s, left by an interrupted session", tenant_id, leftover.name)
    return removed


@contextlib.contextmanager
def tenant_operation(settings: Settings, tenant_id: str, operation: str, *, wait_seconds: float = 0,
                     lease: bool = True, also_lease: tuple[str, ...] = (), lease_id: str | None = None,
                     started_at: datetime | None = None, on_renew: Callable[[], None] | None = None,
                     audit_tenant: str | None = None, audit_row: bool = True) -> Iterator[Operation]:
    """Run one operation on `tenant_id` inside the frame (see the module docstring).

    `lease=False` for an operation whose caller already holds the tenant's lease.
    `on_renew` runs after each renewal of `tenant_id`'s lease (a session's backup flag).
    `audit_tenant` is the tenant the audit row belongs to (default `tenant_id`);
    `audit_row=False` for a read-only look that leaves no trail (a dry run).
    """
    started = started_at or datetime.now(timezone.utc)
    op = Operation(tenant_id, operation, lease_id or new_session_id(started), started)
    if lease:
        for tenant in sorted({tenant_id, *also_lease}):
            held = Lease(settings, tenant, op.lease_id, operation, wait_seconds,
                         on_renew=on_renew if tenant == tenant_id else None)
            try:
                held.acquire()
            except BaseException:
                _release(op)
                raise
            op.leases[tenant] = held
            if TENANT_ID_PATTERN.fullmatch(tenant):  # not a drill's scratch lease: it has no backup staging
                try:
                    sweep_backup_staging(settings, tenant)
                except OSError as exc:  # tidying up never costs the operation (nor leaks its lease)
                    log.warning("tenant %s: backup staging not swept: %s", tenant, one_line(str(exc), 200))
    try:
        yield op
        if op.success is None:
            op.success = True
    except BaseException as exc:
        mapped = _map_error(op, exc)
        op.success = False
        op.error = one_line(str(mapped)) if isinstance(mapped, Exception) else f"interrupted ({type(exc).__name__})"
        if mapped is exc:
            raise
        raise mapped from exc
    finally:
        _release(op)
        if audit_row:
            _write_audit(settings, op, audit_tenant or tenant_id)
