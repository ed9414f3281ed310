"""Cron schedules: ``@app.cron("*/5 * * * *")`` runs a task on a schedule.

Every worker of the app keeps the schedules; at each tick the workers race to claim
it with ``SET NX`` on a key of that tick, so each tick runs exactly once however
many workers run. A worker only schedules ticks from the moment it starts, so ticks
missed while no worker ran are not replayed in a burst. The job pushed for a tick is
an ordinary job: retries, timeouts and dead letters apply to it as to any other.
"""

from __future__ import annotations

import datetime
import logging
import time
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from .config import ConfigError

log = logging.getLogger(__name__)


@dataclass
class CronJob:
    """A schedule: run ``task`` with ``args``/``kwargs`` at every tick of ``spec``
    (5 fields, or 6 with seconds last), in time zone ``tz`` (default UTC)."""

    name: str
    spec: str
    task: str
    tz: str = "UTC"
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not croniter.is_valid(self.spec):
            raise ConfigError(f"cron {self.name!r}: {self.spec!r} is not a cron expression")
        try:
            self.zone = ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"cron {self.name!r}: unknown time zone {self.tz!r}") from None

    def next_after(self, moment: float) -> float:
        """The first tick strictly after ``moment`` (epoch seconds)."""
        start = datetime.datetime.fromtimestamp(moment, self.zone)
        following: float = croniter(self.spec, start).get_next(float)
        return following

    def period(self) -> float:
        first = self.next_after(time.time())
        return self.next_after(first) - first

    def info(self, next_run: float) -> dict[str, Any]:
        return {
            "name": self.name,
            "spec": self.spec,
            "tz": self.tz,
            "task": self.task,
            "next_run": next_run,
        }


class Scheduler:
    """Keeps the next tick of each schedule; run by a worker's master thread."""

    def __init__(self, jobs: list[CronJob], now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.jobs = jobs
        self.next_at = {job.name: job.next_after(now) for job in jobs}

    def next_due(self) -> float | None:
        return min(self.next_at.values(), default=None)

    def due(self, now: float) -> list[tuple[CronJob, float]]:
        """Schedules whose tick has come, with that tick; each advances past ``now``
        (a worker that fell behind runs the latest tick once, not every missed one)."""
        out = []
        for job in self.jobs:
            tick = self.next_at[job.name]
            if tick <= now:
                out.append((job, tick))
                self.next_at[job.name] = job.next_after(max(now, tick))
        return out
