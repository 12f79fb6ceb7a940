"""Notifications through Apprise: every channel is one Apprise URL (`KRYONIX_NOTIFY_URLS`,
space-separated: `whatsapp://TOKEN@FROM_PHONE_ID/TO`, `mailtos://…`, `slack://…`, `json://…`).

The old `KRYONIX_ALERT_WEBHOOK_URL` and `KRYONIX_ALERT_SMTP_*`/`_EMAIL_*` variables become two
such URLs (`json(s)://` and `mailto(s)://`), so existing set-ups keep working.

A URL carries secrets (tokens, passwords): it is never logged; a channel is named by its
scheme and host only (`channel_name`). A channel that fails is logged and never raises.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode, urlsplit

from .errors import one_line

log = logging.getLogger(__name__)

# what each kind of alert is to Apprise (its NotifyType: the `type` of a json:// payload, the icon
# elsewhere); apprise itself is imported when sending (its plugins cost every process that loads this)
NOTIFY_TYPES = {"stale": "failure", "run_failed": "failure", "batch_failed": "failure", "lgpd": "warning",
                "resolved": "success", "batch_ok": "success", "digest": "info"}
NO_CHANNEL = "no notification channel configured (KRYONIX_NOTIFY_URLS)"
MAX_IDS_SHOWN = 10  # tenant ids one message names at most (the rest as a count)


@dataclass(frozen=True)
class Alert:
    kind: str  # stale | resolved | run_failed | batch_failed | batch_ok | lgpd | digest
    title: str
    text: str
    tenant: str | None = None
    fields: dict = field(default_factory=dict)

    @property
    def notify_type(self) -> str:
        return NOTIFY_TYPES.get(self.kind, "info")


def first_ids(ids: list[str], limit: int = MAX_IDS_SHOWN) -> str:
    """`a, b, c` or `a, b, … and 7 more`: a message names the first tenants and counts the rest."""
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def flag(env: dict, name: str) -> bool:
    return (env.get(name) or "").strip().lower() in ("1", "true", "yes", "on")


def notify_success(env: dict | None = None) -> bool:
    """KRYONIX_NOTIFY_SUCCESS=true: a multi-tenant backup sends its summary also when all succeeded."""
    return flag(os.environ if env is None else env, "KRYONIX_NOTIFY_SUCCESS")


def legacy_urls(env: dict) -> list[str]:
    """The old KRYONIX_ALERT_* variables as Apprise URLs: the webhook as json(s)://, SMTP as mailto(s)://."""
    urls = []
    webhook = (env.get("KRYONIX_ALERT_WEBHOOK_URL") or "").strip()
    if webhook:
        parts = urlsplit(webhook)
        if parts.scheme in ("http", "https") and parts.hostname != "hooks.slack.com":
            urls.append(("jsons" if parts.scheme == "https" else "json") + webhook[len(parts.scheme):])
        else:  # Slack's incoming-webhook URL is one Apprise reads as is
            urls.append(webhook)
    host = (env.get("KRYONIX_ALERT_SMTP_HOST") or "").strip()
    to = [a.strip() for a in (env.get("KRYONIX_ALERT_EMAIL_TO") or "").split(",") if a.strip()]
    if host and to:
        user = env.get("KRYONIX_ALERT_SMTP_USER") or ""
        password = env.get("KRYONIX_ALERT_SMTP_PASSWORD") or ""
        auth = (quote(user, safe="") + (":" + quote(password, safe="") if password else "") + "@") if user else ""
        starttls = flag(env, "KRYONIX_ALERT_SMTP_STARTTLS")
        port = (env.get("KRYONIX_ALERT_SMTP_PORT") or "25").strip()
        query = {"smtp": host, "from": env.get("KRYONIX_ALERT_EMAIL_FROM") or "kryonix-backup@localhost",
                 "to": ",".join(to)}
        if starttls:
            query["mode"] = "starttls"
        urls.append(f"{'mailtos' if starttls else 'mailto'}://{auth}{host}:{port}?{urlencode(query)}")
    return urls


def urls_from_env(env: dict | None = None) -> list[str]:
    """KRYONIX_NOTIFY_URLS (space-separated) and the old KRYONIX_ALERT_* set-up, in that order."""
    env = os.environ if env is None else env
    urls = (env.get("KRYONIX_NOTIFY_URLS") or "").split()
    return list(dict.fromkeys(urls + legacy_urls(env)))


def channel_name(url: str) -> str:
    """What a log line may say about a channel: its scheme and host, never user, password, path or query."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return "(unparsable URL)"
    return f"{parts.scheme}://{host}" if parts.scheme else "(not a URL)"


def deliver(urls: list[str] | tuple[str, ...], alert: Alert) -> list[str]:
    """Send `alert` on every channel (one Apprise URL each); the names of those that took it.
    Failures are logged (channel named without its secrets), never raised."""
    import apprise

    delivered = []
    for url in urls:
        name = channel_name(url)
        try:
            channel = apprise.Apprise()
            if not channel.add(url):
                log.error("notification %r: %s is not a valid Apprise URL", alert.title, name)
                continue
            if channel.notify(title=alert.title, body=alert.text, notify_type=alert.notify_type):
                delivered.append(name)
            else:
                log.error("notification %r: channel %s failed", alert.title, name)
        except Exception as exc:  # a channel never fails what it reports on
            log.error("notification %r: channel %s failed: %s", alert.title, name, type(exc).__name__)
    return delivered


def notify(alert: Alert, urls: list[str] | None = None) -> list[str]:
    """Send to the configured channels (KRYONIX_NOTIFY_URLS and the old variables); [] when none."""
    urls = urls_from_env() if urls is None else urls
    return deliver(urls, alert) if urls else []


def send_logged(log, channels, alert: Alert) -> list[str]:
    """Send through `channels` (anything with `configured()` and `send(alert)`, as AlertsResource) and
    log the alert's text with where it went, or that no channel is configured, or that all failed."""
    if not channels.configured():
        log.warning(f"{NO_CHANNEL}: alert not sent: {alert.title}\n{alert.text}")
        return []
    delivered = channels.send(alert)
    if delivered:
        log.info(f"alert sent to {', '.join(delivered)}: {alert.title}\n{alert.text}")
    else:
        log.error(f"alert not delivered (every channel failed): {alert.title}\n{alert.text}")
    return delivered


def batch_summary_alert(what: str, total: int, failed: dict[str, str], where: str = "") -> Alert:
    """One multi-tenant backup's summary: total, succeeded, failed, success rate, and each failed
    tenant with its one-line reason (all of them: a summary is read to act on every failure)."""
    ok = total - len(failed)
    rate = ok / total if total else 1.0
    title = (f"kryonix-backup: {what} failed for {len(failed)} of {total} tenant(s)" if failed
             else f"kryonix-backup: {what} succeeded for all {total} tenant(s)")
    lines = [f"{what}{f' ({where})' if where else ''}: total {total}, succeeded {ok}, failed {len(failed)}, "
             f"success rate {rate:.0%}"]
    if failed:
        lines.append("Failed tenants:")
        lines += [f"- {tenant}: {one_line(reason or 'failed', 300)}" for tenant, reason in failed.items()]
    return Alert("batch_failed" if failed else "batch_ok", title, "\n".join(lines),
                 fields={"total": total, "succeeded": ok, "failed": failed, "success_rate": rate})
