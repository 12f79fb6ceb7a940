"""Tenants as Dagster partitions.

Dynamic partition names are deployment-wide: every asset, check, job and sensor of this
project that works per tenant uses this one definition.
"""
from dagster import DynamicPartitionsDefinition

KRYONIX_TENANTS = "kryonix_tenants"

kryonix_tenants = DynamicPartitionsDefinition(name=KRYONIX_TENANTS)
