"""taskq: a Redis job queue for Python with a master-worker at its heart."""

from .app import App, Task
from .config import ConfigError, Settings
from .job import (
    Job,
    JobAborted,
    JobError,
    JobFailed,
    JobNotFound,
    JobRecord,
    RecordUnreadable,
    ResultTimeout,
)
from .retry import Retry
from .waiting import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    aas_completed,
    agather,
    as_completed,
    async_wait,
    gather,
    wait,
)
from .worker.master import Worker, WorkerError

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "App",
    "ConfigError",
    "Job",
    "JobAborted",
    "JobError",
    "JobFailed",
    "JobNotFound",
    "JobRecord",
    "RecordUnreadable",
    "ResultTimeout",
    "Retry",
    "Settings",
    "Task",
    "Worker",
    "WorkerError",
    "aas_completed",
    "agather",
    "as_completed",
    "async_wait",
    "gather",
    "wait",
]

__version__ = "0.1.0"
