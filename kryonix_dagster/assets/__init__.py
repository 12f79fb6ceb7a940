from .backups import tenant_backup_session
from .fleet_report import fleet_backup_report

__all__ = ["fleet_backup_report", "tenant_backup_session"]
