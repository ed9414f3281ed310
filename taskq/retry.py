"""Retries: when a failed job runs again, and after how long."""

from __future__ import annotations

import random
from dataclasses import dataclass

from .config import MAX_SECONDS, ConfigError


class Retry(Exception):
    """Raise from a task to run it again after ``delay`` seconds (default: the
    task's backoff). It uses the task's retry budget (``retries=``), like a failure."""

    def __init__(self, delay: float | None = None, reason: str = "") -> None:
        super().__init__(reason or "retry requested")
        if delay is not None and not 0 <= delay <= MAX_SECONDS:  # nan: the job would be lost
            raise ValueError(
                f"Retry delay must be zero or more seconds, finite (100 years at most), not {delay}"
            )
        self.delay = delay


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` more runs after the first; delays grow as ``backoff * 2**n`` up
    to ``backoff_max``, each drawn from [delay/2, delay] (jitter spreads a burst of
    failures so they do not all retry at once). Only ``retry_on`` errors retry."""

    retries: int = 0
    backoff: float = 1.0
    backoff_max: float = 300.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if type(self.retries) is not int or self.retries < 0:
            raise ConfigError(f"retries must be a whole number, zero or more, not {self.retries!r}")
        if not 0 <= self.backoff <= self.backoff_max <= MAX_SECONDS:
            raise ConfigError("need 0 <= backoff <= backoff_max, both finite (100 years at most)")
        for exc_type in self.retry_on:
            if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
                raise ConfigError(f"retry_on takes exception classes, not {exc_type!r}")

    def retries_left(self, attempt: int) -> bool:
        """Whether a job that just failed its ``attempt``-th run may run again."""
        return attempt <= self.retries

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        if isinstance(exc, Retry):
            return self.retries_left(attempt)
        return isinstance(exc, self.retry_on) and self.retries_left(attempt)

    def delay(self, attempt: int, exc: BaseException | None = None) -> float:
        """Seconds to wait before the run after ``attempt`` (1 for the first retry)."""
        if isinstance(exc, Retry) and exc.delay is not None:
            return exc.delay
        ceiling = min(self.backoff_max, self.backoff * 2 ** max(attempt - 1, 0))
        return random.uniform(ceiling / 2, ceiling)
