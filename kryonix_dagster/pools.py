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

SERVICE_POOLS = {"postgresql": "postgres", "object_storage": "s3", "redis": "redis", "rabbitmq": "rabbitmq"}
SESSION_POOL = "kryonix_sessions"


class ServicePoolGate:
    def __init__(self, instance, run_id: str, step_key: str, log=None, poll_seconds: float = 1.0):
        self.storage = instance.event_log_storage
        self.run_id = run_id
        self.step_key = step_key
        self.log = log
        self.poll_seconds = poll_seconds

    def _limited(self, pool: str) -> bool:
        if not self.storage.supports_global_concurrency_limits:
            return False
        if pool in self.storage.get_concurrency_keys():
            return True
        return bool(self.storage.initialize_concurrency_limit_to_default(pool))

    @contextlib.contextmanager
    def __call__(self, service: str):
        pool = SERVICE_POOLS.get(service)
        if not pool or not self._limited(pool):
            yield
            return
        claim_key = f"{self.step_key}[{pool}]"
        waited_since = time.monotonic()
        announced = False
        while not self.storage.claim_concurrency_slot(pool, self.run_id, claim_key).is_claimed:
            if self.log and not announced:
                self.log.info(f"waiting for a slot in pool {pool}")
                announced = True
            time.sleep(self.poll_seconds)
        if self.log and announced:
            self.log.info(f"got a slot in pool {pool} after {time.monotonic() - waited_since:.0f}s")
        try:
            yield
        finally:
            self.storage.free_concurrency_slot_for_step(self.run_id, claim_key)
