"""A handle on one job: its status, its record, its result."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from .app import App

R_co = TypeVar("R_co", covariant=True)

#: Statuses after which a job's record no longer changes.
FINAL = frozenset({"done", "failed", "aborted"})
#: Final statuses that make result() raise.
UNSUCCESSFUL = frozenset({"failed", "aborted"})


class JobError(Exception):
    """Base of the errors taskq raises about jobs."""


class JobNotFound(JobError, LookupError):
    """No record for this id: never pushed, or expired after ``result_ttl``."""


class JobFailed(JobError):
    """The job failed; ``remote_traceback`` is the traceback from the worker."""

    def __init__(self, job_id: str, error: str, remote_traceback: str = "") -> None:
        super().__init__(error)
        self.job_id = job_id
        self.error = error
        self.remote_traceback = remote_traceback
        if remote_traceback:
            self.add_note(f"Remote traceback (job {job_id}):\n{remote_traceback.rstrip()}")

    def __reduce__(self) -> tuple[type[JobFailed], tuple[str, str, str]]:
        return (type(self), (self.job_id, self.error, self.remote_traceback))


class JobAborted(JobFailed):
    """The job was aborted (``job.abort()`` / ``taskq abort``) before it finished."""


class RecordUnreadable(JobError, ValueError):
    """The job's record holds what taskq did not write (a field edited by hand)."""


class ResultTimeout(JobError, TimeoutError):
    """The job did not finish within the time given to wait for it."""


@dataclass(frozen=True)
class JobRecord:
    """A job's record as stored in Redis."""

    id: str
    status: str
    task: str
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]
    attempts: int
    enqueued_at: float | None
    started_at: float | None
    finished_at: float | None
    worker: str | None
    result: Any
    error: str | None
    traceback: str | None
    key: str | None = None

    @classmethod
    def from_fields(cls, job_id: str, f: dict[str, str]) -> JobRecord:
        """The record from its fields; RecordUnreadable if one is not as taskq writes it."""
        try:
            return cls._from_fields(job_id, f)
        except (ValueError, TypeError, RecursionError) as exc:
            raise RecordUnreadable(f"job {job_id}: its record cannot be read ({exc})") from None

    @classmethod
    def _from_fields(cls, job_id: str, f: dict[str, str]) -> JobRecord:
        def num(name: str) -> float | None:
            return float(f[name]) if f.get(name) else None

        return cls(
            id=job_id,
            status=f.get("status", "unknown"),
            task=f.get("task", ""),
            queue=f.get("queue", ""),
            args=json.loads(f.get("args") or "[]"),
            kwargs=json.loads(f.get("kwargs") or "{}"),
            attempts=int(f.get("attempts") or 0),
            enqueued_at=num("enqueued_at"),
            started_at=num("started_at"),
            finished_at=num("finished_at"),
            worker=f.get("worker") or None,
            result=json.loads(f["result"]) if f.get("result") else None,
            error=f.get("error") or None,
            traceback=f.get("traceback") or None,
            key=f.get("key") or None,
        )

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def outcome(self) -> Any:
        """The return value; raises :class:`JobFailed` if the job failed."""
        if self.status == "aborted":
            raise JobAborted(self.id, self.error or "Aborted", self.traceback or "")
        if self.status == "failed":
            raise JobFailed(self.id, self.error or "failed", self.traceback or "")
        return self.result


class Job(Generic[R_co]):
    """A pushed job. Cheap to make: ``app.job(id)`` gives a handle on any job id."""

    __slots__ = ("app", "id")

    def __init__(self, app: App, job_id: str) -> None:
        self.app = app
        self.id = job_id

    def __repr__(self) -> str:
        return f"<Job {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.id == self.id and other.app is self.app

    def __hash__(self) -> int:
        return hash(self.id)

    # -- synchronous -----------------------------------------------------------------
    def info(self) -> JobRecord:
        fields = self.app.broker.record(self.id)
        if not fields:
            raise JobNotFound(f"no job {self.id} (never pushed, or its record expired)")
        return JobRecord.from_fields(self.id, fields)

    def status(self) -> str:
        """``queued``, ``active``, ``done`` or ``failed``."""
        return self.info().status

    def result(self, timeout: float | None = None) -> R_co:
        """Wait for the job and return its result, or raise :class:`JobFailed`.

        Raises :class:`ResultTimeout` after ``timeout`` seconds (None: wait forever).
        """
        from .waiting import wait

        done, _ = wait([self], timeout=timeout)
        if not done:
            raise ResultTimeout(f"job {self.id} did not finish within {timeout}s")
        value: R_co = self.info().outcome()
        return value

    def abort(self) -> bool:
        """Abort the job: a queued or delayed job is removed at once; a running one is
        cancelled by its worker within a second (a sync job cannot be interrupted: it
        ends once its thread returns, at most 10 s later, its result discarded). False
        if the job had already finished."""
        record = self.info()
        return self.app.broker.abort(self.id, record.queue, record.status, record.key)

    # -- asyncio ---------------------------------------------------------------------
    async def ainfo(self) -> JobRecord:
        fields = await self.app.abroker().record(self.id)
        if not fields:
            raise JobNotFound(f"no job {self.id} (never pushed, or its record expired)")
        return JobRecord.from_fields(self.id, fields)

    async def astatus(self) -> str:
        return (await self.ainfo()).status

    async def aresult(self, timeout: float | None = None) -> R_co:
        from .waiting import async_wait

        done, _ = await async_wait([self], timeout=timeout)
        if not done:
            raise ResultTimeout(f"job {self.id} did not finish within {timeout}s")
        value: R_co = (await self.ainfo()).outcome()
        return value
