"""Errors that carry their exit code and a one-line, secret-free message."""
from __future__ import annotations


class KryonixError(Exception):
    """An expected failure: the CLI prints the message on one line and exits with `exit_code`."""

    exit_code = 1


class BadInput(KryonixError):
    """The caller asked for something invalid; nothing was touched."""

    exit_code = 2


class OperationFailed(KryonixError):
    """An operation started and failed; the message says what and where."""

    exit_code = 1


class TenantBusy(OperationFailed):
    """Another session holds the tenant's lease."""


def one_line(text: str, limit: int = 400) -> str:
    """Collapse a tool's multi-line stderr into one bounded line for messages."""
    flat = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
