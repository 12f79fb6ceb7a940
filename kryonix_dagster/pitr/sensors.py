"""Archiving stopped: the alert the stale sensor (fleet/freshness.py) also sends, once per
incident and once when archiving works again. Kept in the sensor's cursor under one key."""
from __future__ import annotations

from ..engine.alerts import Alert
from ..engine.errors import KryonixError, one_line

INCIDENT = "__pitr_archiving__"  # not a tenant id (ids are [a-z0-9]), so no clash in the cursor


def archiving_alerts(engine, alerts, open_incidents: dict) -> list[str]:
    """Update `open_incidents` for the archiving incident; returns what was sent."""
    try:
        state = engine.pitr_status()
    except KryonixError as exc:
        problem, stanza = f"status unavailable: {one_line(str(exc), 200)}", "?"
    else:
        if state is None:  # PITR not set up: nothing to watch
            return []
        problem, stanza = state.archiving.problem, state.stanza
    configured = alerts.channels().configured
    if problem and INCIDENT not in open_incidents:
        alert = Alert("stale", f"WAL archiving stopped (stanza {stanza})",
                      f"Point-in-time recovery is at risk: {problem}. `kryonix-backup pitr status` shows the details.",
                      fields={"stanza": stanza, "problem": problem})
        if alerts.send(alert) or not configured:
            open_incidents[INCIDENT] = {"problem": problem}
            return [f"archiving stopped ({stanza})"]
    elif not problem and INCIDENT in open_incidents:
        alert = Alert("resolved", f"WAL archiving works again (stanza {stanza})",
                      "Point-in-time recovery is covered again.", fields={"stanza": stanza})
        if alerts.send(alert) or not configured:
            del open_incidents[INCIDENT]
            return [f"archiving resumed ({stanza})"]
    return []
