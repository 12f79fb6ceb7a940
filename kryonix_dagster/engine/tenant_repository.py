"""Open a tenant's own restic repository with its own password from the key vault."""
from __future__ import annotations

from . import keys
from .config import Settings
from .naming import names_for
from .repository import Restic


def open_repository(settings: Settings, tenant_id: str, create: bool = False) -> Restic | None:
    """The tenant's repository; None when it has never been backed up (unless `create`)."""
    names = names_for(settings, tenant_id)
    password = keys.repository_password(settings, tenant_id, create=create)
    if password is None:
        return None
    repo = Restic(
        names.repository, password, label=f"tenant {tenant_id}",
        cache_dir=settings.state_dir / "restic-cache",
        access_key=settings.repo_access_key, secret_key=settings.repo_secret_key,
    )
    if create and not repo.exists():
        repo.init()
    return repo
