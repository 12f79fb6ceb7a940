"""Where a tenant's repositories live: the primary, and the off-site copy (the secondary).

Workers reach the secondary through `KRYONIX_REPO_SECONDARY`, an append-only endpoint (e.g.
`rest:http://USER:PASSWORD@127.0.0.1:8765` served by `rclone serve restic --append-only --htpasswd`): they can add
snapshots and files but never delete or overwrite. Retention and key rotation on the copy
go through `KRYONIX_REPO_SECONDARY_ADMIN`, the same storage reached directly (a folder or an
S3 prefix, with its own credentials) that workers are not given.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .config import Settings
from .errors import BadInput

PRIMARY = "primary"
SECONDARY = "secondary"
SECONDARY_ADMIN = "secondary-admin"
KINDS = (PRIMARY, SECONDARY, SECONDARY_ADMIN)


@dataclass(frozen=True)
class Location:
    kind: str
    root: str  # the folder, S3 prefix or REST URL the tenants' repositories sit under
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)

    @property
    def is_copy(self) -> bool:
        """Snapshots here are `restic copy`s of the primary's: new ids, the source's in `original`."""
        return self.kind != PRIMARY


def secondary_configured(settings: Settings) -> bool:
    return bool(settings.repo_secondary)


def location(settings: Settings, kind: str = PRIMARY) -> Location:
    if kind == PRIMARY:
        return Location(PRIMARY, settings.repo, settings.repo_access_key, settings.repo_secret_key)
    if kind == SECONDARY:
        if not settings.repo_secondary:
            raise BadInput("no off-site copy is configured: set KRYONIX_REPO_SECONDARY")
        return Location(SECONDARY, settings.repo_secondary, settings.repo_secondary_access_key,
                        settings.repo_secondary_secret_key)
    if kind == SECONDARY_ADMIN:
        if not settings.repo_secondary_admin:
            raise BadInput("this needs the off-site copy's admin path: set KRYONIX_REPO_SECONDARY_ADMIN "
                           "(workers write through the append-only endpoint and cannot delete)")
        return Location(SECONDARY_ADMIN, settings.repo_secondary_admin, settings.repo_secondary_admin_access_key,
                        settings.repo_secondary_admin_secret_key)
    raise BadInput(f"unknown repository {kind!r}: expected one of {', '.join(KINDS)}")


def stash_places(settings: Settings) -> list[Location]:
    """Where the stashes (wrapped passwords, erasure ledgers) go: beside the primary, and beside
    the copy — through its admin path when configured, else through the append-only endpoint."""
    places = [location(settings, PRIMARY)]
    if settings.repo_secondary_admin:
        places.append(location(settings, SECONDARY_ADMIN))
    elif settings.repo_secondary:
        places.append(location(settings, SECONDARY))
    return places


def from_option(raw: str | None) -> str:
    """`--from primary|secondary` (None: primary)."""
    if raw in (None, PRIMARY):
        return PRIMARY
    if raw == SECONDARY:
        return SECONDARY
    raise BadInput(f"invalid --from {raw!r}: expected primary or secondary")
