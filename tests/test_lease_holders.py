"""A lease whose holder died on this host is taken over at once; a live holder, or one of
another host, is waited for (saying who and until when); a killed session's staging is swept by
the next operation on the tenant. Holders are real processes, killed with SIGKILL."""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kryonix_dagster.engine import pg
from kryonix_dagster.engine.errors import TenantBusy
from kryonix_dagster.engine.lease import Lease
from kryonix_dagster.engine.operation import tenant_operation

HOLDER = textwrap.dedent("""
    import sys
    from kryonix_dagster.engine.config import load_settings
    from kryonix_dagster.engine.lease import Lease
    lease = Lease(load_settings(), sys.argv[1], "held-by-child", "backup")
    lease.acquire()
    print("held", flush=True)
    sys.stdin.read()  # hold until the test closes stdin (or kills us)
""")


def start_holder(tenant_id: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, tenant_id], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # blocks until the child holds the lease (or dies)
    assert line.strip() == "held", proc.stderr.read()
    return proc


def lease_row(settings, tenant_id: str):
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT holder, expires_at > now() + interval '60 seconds' FROM tenants.backup_leases "
                    "WHERE cliente_id = %s", (tenant_id,))
        return cur.fetchone()


def test_a_dead_local_holder_is_expired_at_once(settings, tenant_factory, caplog):
    tid = tenant_factory()
    holder = start_holder(tid)
    assert holder.poll() is None
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert holder.returncode == -signal.SIGKILL
    name, far_from_expiry = lease_row(settings, tid)
    assert name.endswith(f":{holder.pid}") and far_from_expiry  # its TTL (120 s) would still run

    caplog.set_level(logging.WARNING, logger="kryonix_dagster.engine.lease")
    with Lease(settings, tid, "next-one", "backup", wait_seconds=0):
        assert lease_row(settings, tid)[0].endswith(f":{os.getpid()}")
    assert f"held by {name}, a process that no longer exists on this host" in caplog.text


def test_a_live_holder_is_waited_for_and_named(settings, tenant_factory, caplog):
    tid = tenant_factory()
    holder = start_holder(tid)
    try:
        caplog.set_level(logging.WARNING, logger="kryonix_dagster.engine.lease")
        with pytest.raises(TenantBusy, match="holds the lease until"):
            Lease(settings, tid, "waiter", "restore", wait_seconds=1.5).acquire()
        waiting = [r.getMessage() for r in caplog.records if "waiting up to" in r.getMessage()]
        assert len(waiting) == 1, caplog.text  # once per holder, not once per poll
        assert "backup session held-by-child (" in waiting[0] and f":{holder.pid}) holds it until" in waiting[0]
        assert holder.poll() is None  # the waiter never touched the live holder
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_a_holder_of_another_host_is_not_judged_dead(settings, tenant_factory):
    tid = tenant_factory()
    with pg.connection(settings.pg_dsn, settings.main_db) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO tenants.backup_leases (cliente_id, session_id, operation, holder, expires_at) "
                    "VALUES (%s, 's-elsewhere', 'backup', 'another-host:1', now() + interval '120 seconds')", (tid,))
    with pytest.raises(TenantBusy, match="another-host:1"):
        Lease(settings, tid, "waiter", "restore", wait_seconds=0).acquire()
    assert lease_row(settings, tid)[0] == "another-host:1"


def test_a_killed_sessions_staging_is_swept_by_the_next_operation(settings, tenant_factory):
    tid = tenant_factory()
    staging = Path(settings.state_dir) / "staging"
    mine = staging / f"cliente_{tid}-compliance-k1ll3d"
    (mine / "lgpd").mkdir(parents=True)
    (mine / "lgpd" / "log_processamento.csv").write_text("1,contato7@exemplo.com.br\n")
    other = staging / f"cliente_{tid}0-objects-alive"  # another tenant whose id starts alike
    other.mkdir(parents=True)
    try:
        with tenant_operation(settings, tid, "verify", audit_row=False):
            assert not mine.exists()
        assert other.is_dir()
    finally:
        shutil.rmtree(other, ignore_errors=True)
