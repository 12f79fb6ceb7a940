"""The one Definitions object of the project: it only gathers."""
from dagster import Definitions

from .assets import tenant_backup_session
from .jobs import backup_tenant_job
from .resources import resources_from_env
from .sensors import tenant_partitions_sensor

defs = Definitions(
    assets=[tenant_backup_session],
    jobs=[backup_tenant_job],
    sensors=[tenant_partitions_sensor],
    resources=resources_from_env(),
)
