"""Per-tenant leases: one session at a time per tenant, and a lease that dies with its holder.

A lease is a row in `tenants.backup_leases` with an expiry. The holder renews it from a
heartbeat thread every third of the TTL; a holder killed with SIGKILL stops renewing and
the lease expires after at most one TTL, after which the next session takes it over.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from . import pg
from .config import Settings
from .errors import TenantBusy


@dataclass(frozen=True)
class LeaseHolder:
    session_id: str
    operation: str
    holder: str
    expires_at: datetime


def holder_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _try_acquire(settings: Settings, tenant_id: str, session_id: str, operation: str) -> LeaseHolder | None:
    """Take the lease if free or expired; return the current holder when someone else has it."""
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO tenants.backup_leases (cliente_id, session_id, operation, holder, expires_at) "
            "VALUES (%(t)s, %(s)s, %(o)s, %(h)s, now() + make_interval(secs => %(ttl)s)) "
            "ON CONFLICT (cliente_id) DO UPDATE SET session_id = EXCLUDED.session_id, "
            "  operation = EXCLUDED.operation, holder = EXCLUDED.holder, acquired_at = now(), "
            "  expires_at = EXCLUDED.expires_at "
            "WHERE tenants.backup_leases.expires_at < now() "
            "RETURNING session_id",
            {"t": tenant_id, "s": session_id, "o": operation, "h": holder_identity(), "ttl": settings.lease_ttl_seconds},
        )
        if cur.fetchone():
            return None
        cur.execute(
            "SELECT session_id, operation, holder, expires_at FROM tenants.backup_leases WHERE cliente_id = %s",
            (tenant_id,),
        )
        row = cur.fetchone()
        return LeaseHolder(*row) if row else None


class Lease:
    """Context manager: acquire (waiting up to `wait_seconds`), renew, release on every path."""

    def __init__(self, settings: Settings, tenant_id: str, session_id: str, operation: str,
                 wait_seconds: float = 0, on_renew: Callable[[], None] | None = None):
        self.settings = settings
        self.tenant_id = tenant_id
        self.session_id = session_id
        self.operation = operation
        self.wait_seconds = wait_seconds
        self.on_renew = on_renew
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait_seconds
        while True:
            holder = _try_acquire(self.settings, self.tenant_id, self.session_id, self.operation)
            if holder is None:
                break
            if time.monotonic() >= deadline:
                raise TenantBusy(
                    f"tenant {self.tenant_id}: {holder.operation} session {holder.session_id} "
                    f"({holder.holder}) holds the lease until {holder.expires_at:%Y-%m-%d %H:%M:%S%z}; "
                    "try again later"
                )
            time.sleep(min(2.0, max(0.2, deadline - time.monotonic())))
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease-{self.tenant_id}", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        interval = max(1.0, self.settings.lease_ttl_seconds / 3)
        while not self._stop.wait(interval):
            try:
                with pg.connection(self.settings.pg_dsn, self.settings.main_db) as conn, conn.cursor() as cur:
                    cur.execute(
                        "UPDATE tenants.backup_leases SET expires_at = now() + make_interval(secs => %s) "
                        "WHERE cliente_id = %s AND session_id = %s",
                        (self.settings.lease_ttl_seconds, self.tenant_id, self.session_id),
                    )
                    self.lost = cur.rowcount == 0
                if self.on_renew:
                    self.on_renew()
            except Exception:  # a missed renewal is retried; the TTL covers transient failures
                continue

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
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
