"""Settings: one frozen dataclass, built from keyword arguments or the environment.

Every CLI option maps to a field here and to a ``TASKQ_*`` environment variable.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass
from typing import Any

DEFAULT_URL = "redis://localhost:6379/0"
DEFAULT_QUEUE = "default"

#: Environment variables read by :meth:`Settings.from_env` and by the CLI.
ENV_VARS = {
    "redis_url": "TASKQ_REDIS_URL",
    "queues": "TASKQ_QUEUES",
    "concurrency": "TASKQ_CONCURRENCY",
    "grace": "TASKQ_GRACE",
    "result_ttl": "TASKQ_RESULT_TTL",
    "heartbeat_timeout": "TASKQ_HEARTBEAT_TIMEOUT",
    "dead_retention": "TASKQ_DEAD_RETENTION",
}

#: Set for the children of ``--processes --metrics-port``: prometheus-client's
#: multiprocess directory, where they write the metrics their supervisor serves.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_QUEUE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,100}")


class ConfigError(ValueError):
    """A setting has a value taskq cannot use."""


def check_queue_name(name: str) -> str:
    """Queue names become part of Redis keys (inside a ``{hash tag}``): keep them plain."""
    if not isinstance(name, str) or not _QUEUE_NAME.fullmatch(name):
        raise ConfigError(
            f"invalid queue name {name!r}: use 1-100 letters, digits, '_', '-' or '.'"
        )
    return name


#: The longest a time setting may be (100 years): past about that, the key expiries
#: taskq asks of Redis overflow its range and every write carrying one is refused.
MAX_SECONDS = 100 * 365 * 86_400


@dataclass(frozen=True)
class Settings:
    """How an app connects and how its workers behave."""

    redis_url: str = DEFAULT_URL
    queues: tuple[str, ...] = (DEFAULT_QUEUE,)
    concurrency: int = 10
    grace: float = 20.0
    result_ttl: int = 86_400
    heartbeat_timeout: float = 15.0
    dead_retention: int = 7 * 86_400

    def __post_init__(self) -> None:
        if isinstance(self.queues, str):  # Settings(queues="high") means one queue
            object.__setattr__(self, "queues", (self.queues,))
        # A queue named twice is served once, at its first (highest) priority.
        object.__setattr__(self, "queues", tuple(dict.fromkeys(self.queues)))
        for name in ("grace", "heartbeat_timeout"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name} must be a finite number of seconds")
        if not self.queues:
            raise ConfigError("at least one queue is needed")
        for q in self.queues:
            check_queue_name(q)
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, not {self.concurrency}")
        if self.grace < 0:
            raise ConfigError(f"grace must be zero or more seconds, not {self.grace}")
        if not 1 <= self.result_ttl <= MAX_SECONDS:  # Redis refuses an EXPIRE past its range
            raise ConfigError(
                f"result_ttl must be 1 to {MAX_SECONDS} seconds (100 years), not {self.result_ttl}"
            )
        if self.dead_retention < 1:
            raise ConfigError(
                f"dead_retention must be at least 1 second, not {self.dead_retention}"
            )
        if not 0.5 <= self.heartbeat_timeout <= MAX_SECONDS:
            raise ConfigError(
                f"heartbeat_timeout must be 0.5 to {MAX_SECONDS} seconds, "
                f"not {self.heartbeat_timeout}"
            )

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between heartbeats: five fit in the timeout, at most two seconds."""
        return min(2.0, self.heartbeat_timeout / 5)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``TASKQ_*`` variables, then ``overrides`` (ignored where None)."""
        env = dict(os.environ) if env is None else env
        values: dict[str, Any] = {}
        for name, var in ENV_VARS.items():
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            values[name] = _parse(name, var, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


_WHOLE = ("concurrency", "result_ttl", "dead_retention")


def _parse(name: str, var: str, raw: str) -> Any:
    try:
        if name == "queues":
            return tuple(q.strip() for q in raw.split(",") if q.strip())
        if name in _WHOLE:
            return int(raw)
        if name in ("grace", "heartbeat_timeout"):
            return float(raw)
    except ValueError:
        kind = "whole number" if name in _WHOLE else "number"
        raise ConfigError(f"{var}={raw!r} is not a {kind}") from None
    return raw


_PASSWORD_ARG = re.compile(r"(?i)([?&](?:sentinel_)?password=)[^&#]*")


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***``: safe for logs and errors.

    Everything up to the last ``@`` after the scheme is user info, whatever characters
    the password holds; only the user name before the first ``:`` is kept.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _PASSWORD_ARG.sub(r"\1***", url)
    userinfo, at, host = rest.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        rest = f"{user}:***@{host}" if colon else rest
    return scheme + "://" + _PASSWORD_ARG.sub(r"\1***", rest)
