from .failed_runs import failed_runs_sensor
from .stale_backups import stale_backups_sensor
from .tenant_partitions import tenant_partitions_sensor

__all__ = ["failed_runs_sensor", "stale_backups_sensor", "tenant_partitions_sensor"]
