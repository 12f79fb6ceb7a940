"""The one place that touches Dagster's non-public API (pinned dagster==1.13.27).

Dagster 1.13 has no public call to claim or free a pool slot from inside a step: the run
coordinator does it per step through the instance's event-log storage. A session is one
step with four services inside, so it claims slots of the service pools itself, through
this adapter. tests/test_dagster_domains.py checks the shape used here against the pinned
version and fails loudly when an upgrade changes it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PINNED_DAGSTER = "1.13.27"
STORAGE_METHODS = ("get_concurrency_keys", "initialize_concurrency_limit_to_default", "claim_concurrency_slot",
                   "free_concurrency_slot_for_step", "set_concurrency_slots")


@dataclass
class ConcurrencySlots:
    """Pool slots of one instance: which pools throttle, claim, free, set a limit."""

    storage: Any  # dagster's EventLogStorage (private type)
    default_limit: int | None  # the instance's concurrency.pools.default_limit

    @classmethod
    def of(cls, instance) -> "ConcurrencySlots":
        return cls(instance.event_log_storage, instance.global_op_concurrency_default_limit)

    @property
    def supported(self) -> bool:
        return bool(self.storage.supports_global_concurrency_limits)

    def limited(self, pool: str) -> bool:
        """True when the pool has a limit (its own, or the instance's default, applied now)."""
        if not self.supported:
            return False
        if pool in self.storage.get_concurrency_keys():
            return True
        if self.default_limit is None:
            # initialising without a default gives the pool 0 slots: every claim would wait forever
            return False
        return bool(self.storage.initialize_concurrency_limit_to_default(pool))

    def claim(self, pool: str, run_id: str, claim_key: str) -> bool:
        return bool(self.storage.claim_concurrency_slot(pool, run_id, claim_key).is_claimed)

    def free(self, run_id: str, claim_key: str) -> None:
        self.storage.free_concurrency_slot_for_step(run_id, claim_key)

    def set_limit(self, pool: str, slots: int) -> None:
        self.storage.set_concurrency_slots(pool, slots)


# --- executors (workers/executor.py): Dagster 1.13 exports no retries schema, RetryMode or
# InProcessExecutor; the kryonix executor chooses between in-process and Celery at run start.
def retries_config_field():
    from dagster._core.execution.retries import get_retries_config

    return get_retries_config()


def retry_mode(retries_config: dict):
    from dagster._core.execution.retries import RetryMode

    return RetryMode.from_config(retries_config)


def in_process_executor(retries_config: dict):
    from dagster._core.executor.in_process import InProcessExecutor

    return InProcessExecutor(retries=retry_mode(retries_config))
