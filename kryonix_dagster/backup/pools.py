"""Per-service pools inside one session.

A session must run in one process (its lease, its backup flag, its manifest written last),
so it is one Dagster step. Each tier still takes a slot of its service's pool (postgres,
s3, redis, rabbitmq) from the instance's concurrency storage while it runs, exactly as a
step would: the UI shows the pools, and run monitoring frees a cancelled run's slots.
A pool with no limit configured (and no instance default) does not throttle.
"""
from __future__ import annotations

import contextlib
import time

from ..dagster_private import ConcurrencySlots
from ..engine.tiers import TIERS

SERVICE_POOLS = {t.service: t.pool for t in TIERS if t.pool}  # each tier names its pool on its spec
SESSION_POOL = "kryonix_sessions"


class ServicePoolGate:
    def __init__(self, instance, run_id: str, step_key: str, log=None, poll_seconds: float = 1.0):
        self.slots = ConcurrencySlots.of(instance)
        self.run_id = run_id
        self.step_key = step_key
        self.log = log
        self.poll_seconds = poll_seconds

    @contextlib.contextmanager
    def __call__(self, service: str):
        pool = SERVICE_POOLS.get(service)
        if not pool or not self.slots.limited(pool):
            yield
            return
        claim_key = f"{self.step_key}[{pool}]"
        waited_since = time.monotonic()
        announced = False
        while not self.slots.claim(pool, self.run_id, claim_key):
            if self.log and not announced:
                self.log.info(f"waiting for a slot in pool {pool}")
                announced = True
            time.sleep(self.poll_seconds)
        if self.log and announced:
            self.log.info(f"got a slot in pool {pool} after {time.monotonic() - waited_since:.0f}s")
        try:
            yield
        finally:
            self.slots.free(self.run_id, claim_key)
