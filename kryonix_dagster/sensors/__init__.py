from .tenant_partitions import tenant_partitions_sensor

__all__ = ["tenant_partitions_sensor"]
