"""The executor of the batch jobs: in-process by default, Dagster's Celery executor when
KRYONIX_EXECUTOR=celery (or the run config's `execution.config.mode`).

Local defaults stay simple (`make demo`, `make dev` need no workers); a deployment sets
KRYONIX_EXECUTOR=celery for the daemon's runs, and every step of a batch run (the split and
each chunk of tenants) then goes to the `dagster` queue on the broker, where any worker takes
it. The mode is read when the run starts, in the run's own process, so one code location
serves both.
"""
from __future__ import annotations

import os

from dagster import Field, Noneable, executor, multiple_process_executor_requirements

from ..dagster_private import in_process_executor, retries_config_field, retry_mode
from .broker import CELERY_CONFIG, broker_url, celery_queue

MODES = ("in_process", "celery")


def executor_mode(configured: str | None, environ=os.environ) -> str:
    mode = (configured or environ.get("KRYONIX_EXECUTOR") or "in_process").strip().lower()
    if mode not in MODES:
        raise ValueError(f"KRYONIX_EXECUTOR must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


@executor(
    name="kryonix_executor",
    config_schema={
        "mode": Field(Noneable(str), default_value=None,
                      description="in_process or celery; default: $KRYONIX_EXECUTOR, else in_process"),
        "broker": Field(Noneable(str), default_value=None,
                        description="Celery broker URL; default: the product's RabbitMQ, vhost /kryonix_dagster"),
        "queue": Field(Noneable(str), default_value=None,
                       description="Celery queue the steps go to; default: $KRYONIX_CELERY_QUEUE, else dagster"),
        "retries": retries_config_field(),
    },
    requirements=multiple_process_executor_requirements(),
)
def kryonix_executor(init_context):
    config = init_context.executor_config
    if executor_mode(config["mode"]) == "celery":
        from dagster_celery.executor import CeleryExecutor

        return CeleryExecutor(broker=config["broker"] or broker_url(), backend="rpc://",
                              config_source={**CELERY_CONFIG, "task_default_queue": config["queue"] or celery_queue()},
                              retries=retry_mode(config["retries"]))
    return in_process_executor(config["retries"])
