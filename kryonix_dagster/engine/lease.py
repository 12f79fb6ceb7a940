"""Per-tenant leases: one operation at a time per tenant, and a lease that dies with its holder.

A lease is a row in `tenants.backup_leases` with an expiry. The holder renews it from a
heartbeat thread every third of the TTL; a holder killed with SIGKILL stops renewing and
the lease expires after at most one TTL, after which the next operation takes it over. A
holder on this host whose process is gone (its `host:pid` names no running process here) is
expired at once by the next operation that finds it: nobody waits out a dead process's TTL.
An operation that waits for a live holder says who holds the lease and until when.

A holder can also lose its lease while alive: frozen (SIGSTOP, a paused VM) or cut off from
the main database for longer than the TTL. `lost` then turns true and stays true, and
`ensure_held()` is the fenced check to make right before anything that must only happen
under the lease (a session's manifest): it renews the lease in the main database and fails
if the row is no longer ours. A lease is never held longer than `max_hold_seconds`: the
heartbeat stops renewing, so a stuck holder cannot block its tenant forever.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from . import pg
from .config import Settings
from .errors import OperationFailed, TenantBusy

log = logging.getLogger(__name__)
MAX_HOLD_SECONDS = 12 * 3600  # far above any session seen; a holder past it is stuck


class LeaseLost(OperationFailed):
    """The lease expired under its holder (frozen, or the main database unreachable past the TTL)."""


@dataclass(frozen=True)
class LeaseHolder:
    session_id: str
    operation: str
    holder: str
    expires_at: datetime


def holder_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def holder_is_dead(holder: str) -> bool:
    """True only for a holder of this host whose process no longer exists. A holder of
    another host, a running (or zombie) process, or a name we cannot read: not known dead."""
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # a process of another user: alive
        return False
    return False


def _expire_dead(settings: Settings, tenant_id: str, holder: LeaseHolder) -> bool:
    """Expire the lease of a dead local holder (only if the row is still that holder's)."""
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute("UPDATE tenants.backup_leases SET expires_at = now() - interval '1 second' "
                    "WHERE cliente_id = %s AND session_id = %s AND holder = %s AND expires_at >= now()",
                    (tenant_id, holder.session_id, holder.holder))
        return cur.rowcount == 1


def _try_acquire(settings: Settings, tenant_id: str, session_id: str,
                 operation: str) -> tuple[datetime | None, LeaseHolder | None]:
    """Take the lease if free or expired: (acquired_at by the main database's clock, None);
    (None, the current holder) when someone else has it."""
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO tenants.backup_leases (cliente_id, session_id, operation, holder, expires_at) "
            "VALUES (%(t)s, %(s)s, %(o)s, %(h)s, now() + make_interval(secs => %(ttl)s)) "
            "ON CONFLICT (cliente_id) DO UPDATE SET session_id = EXCLUDED.session_id, "
            "  operation = EXCLUDED.operation, holder = EXCLUDED.holder, acquired_at = now(), "
            "  expires_at = EXCLUDED.expires_at "
            "WHERE tenants.backup_leases.expires_at < now() "
            "RETURNING acquired_at",
            {"t": tenant_id, "s": session_id, "o": operation, "h": holder_identity(), "ttl": settings.lease_ttl_seconds},
        )
        taken = cur.fetchone()
        if taken:
            return taken[0], None
        cur.execute(
            "SELECT session_id, operation, holder, expires_at FROM tenants.backup_leases WHERE cliente_id = %s",
            (tenant_id,),
        )
        row = cur.fetchone()
        return None, LeaseHolder(*row) if row else None


def _renew(settings: Settings, tenant_id: str, session_id: str) -> bool:
    """Extend our lease by one TTL; False when it is no longer ours or already expired."""
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE tenants.backup_leases SET expires_at = now() + make_interval(secs => %s) "
            "WHERE cliente_id = %s AND session_id = %s AND expires_at > now()",
            (settings.lease_ttl_seconds, tenant_id, session_id),
        )
        return cur.rowcount == 1


class Lease:
    """Context manager: acquire (waiting up to `wait_seconds`), renew, release on every path."""

    def __init__(self, settings: Settings, tenant_id: str, session_id: str, operation: str,
                 wait_seconds: float = 0, on_renew: Callable[[], None] | None = None,
                 max_hold_seconds: float = MAX_HOLD_SECONDS):
        self.settings = settings
        self.tenant_id = tenant_id
        self.session_id = session_id
        self.operation = operation
        self.wait_seconds = wait_seconds
        self.on_renew = on_renew
        self.max_hold_seconds = max_hold_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._acquired_at = 0.0
        self._renewed_at = 0.0
        self.lost = False
        self.lost_reason: str | None = None
        # by the main database's clock: comparable across hosts (the audit row records it)
        self.acquired_at: datetime | None = None

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait_seconds
        announced: tuple[str, str] | None = None
        while True:
            acquired_at, holder = _try_acquire(self.settings, self.tenant_id, self.session_id, self.operation)
            if acquired_at is not None:
                self.acquired_at = acquired_at
                break
            if holder is None:  # released between our two statements: try again at once
                continue
            if holder_is_dead(holder.holder) and _expire_dead(self.settings, self.tenant_id, holder):
                log.warning("tenant %s: the lease of %s session %s was held by %s, a process that no longer "
                            "exists on this host: expired it", self.tenant_id, holder.operation,
                            holder.session_id, holder.holder)
                continue
            if time.monotonic() >= deadline:
                raise TenantBusy(
                    f"tenant {self.tenant_id}: {holder.operation} session {holder.session_id} "
                    f"({holder.holder}) holds the lease until {holder.expires_at:%Y-%m-%d %H:%M:%S%z}; "
                    "try again later"
                )
            if announced != (holder.session_id, holder.holder):  # once per holder, not per poll
                announced = (holder.session_id, holder.holder)
                log.warning("tenant %s: waiting up to %.0fs for the lease: %s session %s (%s) holds it until "
                            "%s", self.tenant_id, max(0.0, deadline - time.monotonic()), holder.operation,
                            holder.session_id, holder.holder, f"{holder.expires_at:%Y-%m-%d %H:%M:%S%z}")
            # a waiter takes over within half a second of the release or the expiry (one cheap query)
            time.sleep(min(0.5, max(0.05, deadline - time.monotonic())))
        self._acquired_at = self._renewed_at = time.monotonic()
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease-{self.tenant_id}", daemon=True)
        self._thread.start()

    def _mark_lost(self, reason: str) -> None:
        if not self.lost:
            self.lost, self.lost_reason = True, reason
            log.error("tenant %s: %s %s lost its lease: %s", self.tenant_id, self.operation, self.session_id, reason)

    def _heartbeat(self) -> None:
        ttl = self.settings.lease_ttl_seconds
        interval = max(1.0, ttl / 3)
        while not self._stop.wait(interval):
            if time.monotonic() - self._acquired_at > self.max_hold_seconds:
                self._mark_lost(f"held longer than the {self.max_hold_seconds:.0f}s cap")
                return
            try:
                renewed = _renew(self.settings, self.tenant_id, self.session_id)
            except Exception as exc:  # a missed renewal is retried while the TTL still covers it
                if time.monotonic() - self._renewed_at > ttl:
                    self._mark_lost(f"not renewed for more than its {ttl}s TTL ({type(exc).__name__})")
                    return
                continue
            if not renewed:
                self._mark_lost("expired and taken over, or removed")
                return
            self._renewed_at = time.monotonic()
            if self.on_renew and not self._stop.is_set():
                try:
                    self.on_renew()
                except Exception as exc:
                    log.warning("tenant %s: lease renewal hook failed: %s", self.tenant_id, type(exc).__name__)

    def ensure_held(self) -> None:
        """Fenced check: renew in the main database now; raise LeaseLost when it is not ours."""
        if not self.lost:
            try:
                if not _renew(self.settings, self.tenant_id, self.session_id):
                    self._mark_lost("expired and taken over, or removed")
                else:
                    self._renewed_at = time.monotonic()
            except Exception as exc:
                self._mark_lost(f"main database unreachable to confirm it ({type(exc).__name__})")
        if self.lost:
            raise LeaseLost(f"tenant {self.tenant_id}: {self.operation} {self.session_id} lost its lease "
                            f"({self.lost_reason}); stopped")

    def stop_heartbeat(self) -> None:
        """No renewal (and no renewal hook) runs after this returns."""
        self._stop.set()
        if self._thread and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def release(self) -> None:
        self.stop_heartbeat()
        with pg.connection(self.settings.pg_dsn, self.settings.main_db) as conn, conn.cursor() as cur:
            cur.execute(
                "DELETE FROM tenants.backup_leases WHERE cliente_id = %s AND session_id = %s",
                (self.tenant_id, self.session_id),
            )

    def __enter__(self) -> "Lease":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
