"""The Celery app the workers run: `celery -A kryonix_dagster.workers.app worker -Q $KRYONIX_CELERY_QUEUE -n NAME@%h`.

Dagster's own tasks (dagster_celery.tasks) on our broker, with the settings that make a lost
worker harmless: a task is acknowledged only when it has finished (`task_acks_late`) and is
given back to the queue when its worker dies (`task_reject_on_worker_lost`), so RabbitMQ
hands a killed worker's chunk to another worker, which skips the tenants already backed up
(backup.jobs.backup_chunk); each worker takes one task at a time (prefetch 1).
"""
import importlib

from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_execute_job_task, create_resume_job_task, create_task

from .broker import CELERY_CONFIG, broker_url, celery_queue

app = make_app({"broker": broker_url(), "backend": "rpc://"})
app.conf.update(CELERY_CONFIG, task_default_queue=celery_queue())

# The code location, imported once by the worker's main process and inherited by its pool
# processes: a step starts without importing it again.
importlib.import_module("kryonix_dagster.definitions")

execute_plan = create_task(app)
execute_job = create_execute_job_task(app)
resume_job = create_resume_job_task(app)
