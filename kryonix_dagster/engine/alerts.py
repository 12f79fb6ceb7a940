"""Alerts to a generic JSON webhook (Slack-compatible `text`) and to e-mail over SMTP.

A webhook URL is a secret (Slack's carry their token in the path): a failed delivery is
logged with the exception's type and the HTTP status only, never the URL.
"""
from __future__ import annotations

import logging
import smtplib
from dataclasses import dataclass, field
from email.message import EmailMessage

import requests

from .errors import one_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alert:
    kind: str  # stale | resolved | run_failed
    title: str
    text: str
    tenant: str | None = None
    fields: dict = field(default_factory=dict)

    def payload(self) -> dict:
        """Slack reads `text`; anything else reads the structured `kryonix` part."""
        return {"text": f"*{self.title}*\n{self.text}",
                "kryonix": {"kind": self.kind, "tenant": self.tenant, "title": self.title, "text": self.text,
                            **self.fields}}


@dataclass(frozen=True)
class AlertChannels:
    webhook_url: str | None = None
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_user: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    smtp_starttls: bool = False
    email_from: str = "kryonix-backup@localhost"
    email_to: tuple[str, ...] = ()

    @property
    def configured(self) -> bool:
        return bool(self.webhook_url or (self.smtp_host and self.email_to))


def send_webhook(url: str, alert: Alert) -> None:
    resp = requests.post(url, json=alert.payload(), timeout=10)
    resp.raise_for_status()


def _webhook_failure(exc: requests.RequestException) -> str:
    """What went wrong, without the URL: the exception's type and the HTTP status, if any."""
    status = getattr(exc.response, "status_code", None)
    return type(exc).__name__ + (f" (HTTP {status})" if status is not None else "")


def send_email(channels: AlertChannels, alert: Alert) -> None:
    message = EmailMessage()
    message["Subject"] = f"[kryonix-backup] {alert.title}"
    message["From"] = channels.email_from
    message["To"] = ", ".join(channels.email_to)
    body = [alert.text, ""] + [f"{k}: {v}" for k, v in alert.fields.items()]
    message.set_content("\n".join(body))
    with smtplib.SMTP(channels.smtp_host, channels.smtp_port, timeout=15) as smtp:
        if channels.smtp_starttls:
            smtp.starttls()
        if channels.smtp_user:
            smtp.login(channels.smtp_user, channels.smtp_password or "")
        smtp.send_message(message)


def deliver(channels: AlertChannels, alert: Alert) -> list[str]:
    """Send on every configured channel; the channels that took it. Failures are logged, not raised."""
    delivered = []
    if channels.webhook_url:
        try:
            send_webhook(channels.webhook_url, alert)
            delivered.append("webhook")
        except requests.RequestException as exc:  # its text holds the URL, and the URL holds tokens
            log.error("alert %r: webhook failed: %s", alert.title, _webhook_failure(exc))
    if channels.smtp_host and channels.email_to:
        try:
            send_email(channels, alert)
            delivered.append("email")
        except (OSError, smtplib.SMTPException) as exc:
            log.error("alert %r: e-mail failed: %s", alert.title, one_line(str(exc), 200))
    return delivered
