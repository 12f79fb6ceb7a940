"""How an operation tells its caller what it is doing: the CLI draws progress on a terminal,
Dagster writes the run's log; the engine only calls these three verbs. And a stopwatch."""
from __future__ import annotations

import time
from typing import Protocol


class Reporter(Protocol):
    def info(self, message: str) -> None: ...
    def warn(self, message: str) -> None: ...
    def progress(self, task: str, done: int, total: int | None) -> None: ...


class NullReporter:
    def info(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def progress(self, task: str, done: int, total: int | None) -> None:
        pass


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.monotonic()

    @property
    def seconds(self) -> float:
        return round(time.monotonic() - self.start, 3)
