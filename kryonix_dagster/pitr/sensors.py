"""Archiving stopped: a line of the stale sensor's (fleet/freshness.py) one message per tick, once
per incident and once when archiving works again. Kept in the sensor's cursor under one key."""
from __future__ import annotations

from dataclasses import dataclass

from ..engine.errors import KryonixError, one_line

INCIDENT = "__pitr_archiving__"  # not a tenant id (ids are [a-z0-9]), so no clash in the cursor


@dataclass(frozen=True)
class ArchivingChange:
    """What this tick has to say about WAL archiving, and the cursor entry once it is said."""

    opened: bool  # True: archiving stopped; False: it works again
    stanza: str
    line: str
    incident: dict | None  # the cursor's value under INCIDENT (None: the key goes)

    @property
    def summary(self) -> str:
        return f"archiving {'stopped' if self.opened else 'resumed'} ({self.stanza})"

    def apply(self, open_incidents: dict) -> None:
        if self.incident is None:
            open_incidents.pop(INCIDENT, None)
        else:
            open_incidents[INCIDENT] = self.incident


def archiving_change(engine, open_incidents: dict) -> ArchivingChange | None:
    """None when nothing changed (or PITR is not set up)."""
    try:
        state = engine.pitr_status()
    except KryonixError as exc:
        problem, stanza = f"status unavailable: {one_line(str(exc), 200)}", "?"
    else:
        if state is None:  # PITR not set up: nothing to watch
            return None
        problem, stanza = state.archiving.problem, state.stanza
    if problem and INCIDENT not in open_incidents:
        return ArchivingChange(True, stanza, f"WAL archiving stopped (stanza {stanza}): point-in-time recovery is at "
                                             f"risk: {problem}. `kryonix-backup pitr status` shows the details.",
                               {"problem": problem})
    if not problem and INCIDENT in open_incidents:
        return ArchivingChange(False, stanza, f"WAL archiving works again (stanza {stanza}): point-in-time recovery "
                                              "is covered again.", None)
    return None
