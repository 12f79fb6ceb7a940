"""Progress and messages of long operations on the terminal (stderr; stdout stays for results)."""
from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import click


def human_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class TerminalReporter:
    """Info lines, warnings, and a redrawn progress bar on a TTY (a line every 10 s otherwise).

    Everything goes to stderr: stdout stays for results (and the one `--json` document)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self._last_line = 0.0
        self._bar_shown = False
        self._lock = threading.Lock()

    def _clear_bar(self) -> None:
        if self._bar_shown:
            click.echo("\r\033[K", nl=False, err=True)
            self._bar_shown = False

    def _draw(self, text: str) -> None:
        with self._lock:
            click.echo(f"\r\033[K{text}", nl=False, err=True)
            self._bar_shown = True

    def info(self, message: str) -> None:
        if not self.quiet:
            with self._lock:
                self._clear_bar()
                click.echo(message, err=True)

    def warn(self, message: str) -> None:
        with self._lock:
            self._clear_bar()
            click.echo(f"warning: {message}", err=True)

    @contextmanager
    def activity(self, task: str) -> Iterator[None]:
        """For work that reports no progress of its own: on a terminal, redraw `task… Ns` every
        second until the block ends; elsewhere a line every 10 s (a quick failure prints only
        its error line)."""
        if self.quiet:
            yield
            return
        done = threading.Event()
        started = time.monotonic()

        def text() -> str:
            return f"{task}… {time.monotonic() - started:.0f}s"

        def tick() -> None:
            if self.tty:
                self._draw(text())
            while not done.wait(1.0 if self.tty else 10.0):
                if self.tty:
                    self._draw(text())
                else:
                    self.info(text())

        ticker = threading.Thread(target=tick, name="progress", daemon=True)
        ticker.start()
        try:
            yield
        finally:
            done.set()
            ticker.join()
            with self._lock:
                self._clear_bar()

    def progress(self, task: str, done: int, total: int | None) -> None:
        if self.quiet:
            return
        if total:
            width = 30
            filled = int(width * min(done, total) / total)
            text = f"{task} [{'#' * filled}{'.' * (width - filled)}] {human_bytes(done)}/{human_bytes(total)}"
        else:
            text = f"{task}: {human_bytes(done)}"
        if self.tty:
            self._draw(text)
        elif done > 0 and time.monotonic() - self._last_line >= 10:  # a log line of "0 B" says nothing
            click.echo(text, err=True)
            self._last_line = time.monotonic()
