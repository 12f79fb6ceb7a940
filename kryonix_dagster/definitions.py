"""The one Definitions object of the project: it only gathers."""
from dagster import Definitions

from .resources import resources_from_env
from .sensors import tenant_partitions_sensor

defs = Definitions(
    sensors=[tenant_partitions_sensor],
    resources=resources_from_env(),
)
