"""What a Celery worker reconstructs in the worker tests: the batch job with the project's
resources bound (the daemon does the same through the code location)."""
from kryonix_dagster.definitions import defs


def backup_batch_job():
    return defs.get_job_def("backup_batch_job")


def integrity_job():
    return defs.get_job_def("integrity_job")
