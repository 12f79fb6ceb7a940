"""The one Definitions object of the project: it only gathers the domains and the resources.

Each domain package keeps its assets, checks, jobs, schedules and sensors together:
backup, retention, integrity, drills, fleet.
"""
from dagster import Definitions

from . import backup, drills, fleet, integrity, lgpd_erasure, retention
from .resources import resources_from_env

defs = Definitions.merge(
    backup.defs,
    retention.defs,
    integrity.defs,
    drills.defs,
    fleet.defs,
    lgpd_erasure.defs,
    Definitions(resources=resources_from_env()),
)
