"""Scale-out: Dagster's Celery executor on the product's RabbitMQ.

`executor.py` is the executor every batch job uses (in-process unless KRYONIX_EXECUTOR=celery),
`broker.py` the broker URL and its vhost, `app.py` the Celery app the worker processes run,
`io.py` the IO manager that carries a batch's tenant chunks between hosts.
"""
