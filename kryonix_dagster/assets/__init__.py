from .backups import tenant_backup_session

__all__ = ["tenant_backup_session"]
