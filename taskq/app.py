"""The App (settings, task registry, clients) and the Task a decorated function becomes."""

from __future__ import annotations

import asyncio
import inspect
import math
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar, overload

from .abroker import AsyncBroker
from .broker import Broker
from .config import MAX_SECONDS, ConfigError, Settings, check_queue_name
from .connection import connect, connect_async
from .job import Job
from .payload import Payload, utf8_ok
from .retry import RetryPolicy

if TYPE_CHECKING:
    from .cron import CronJob

P = ParamSpec("P")
R = TypeVar("R")

#: One push_many item: a tuple of positional arguments, or (args, kwargs).
ArgsItem = tuple[Any, ...] | tuple[tuple[Any, ...], dict[str, Any]]


def due_time(delay: float | None, at: datetime | float | None) -> float | None:
    """Epoch seconds a delayed job is due, or None to queue it now."""
    if delay is not None and at is not None:
        raise TypeError("give delay= or at=, not both")
    now = time.time()
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not delay >= 0:
            raise ValueError(f"delay must be zero or more seconds, not {delay!r}")
        due = now + delay
    elif at is not None:
        if isinstance(at, datetime):
            due = at.timestamp()
        elif isinstance(at, int | float) and not isinstance(at, bool):
            try:
                due = float(at)
            except OverflowError:  # an int past any float
                raise ValueError(f"at={at!r} is too large for a time") from None
        else:
            raise TypeError(f"at must be a datetime or epoch seconds, not {type(at).__name__}")
    else:
        return None
    if not math.isfinite(due):  # infinity would hold the job back for ever
        shown = delay if at is None else at
        raise ValueError(f"the job's due time must be finite, not {shown!r}")
    if due - now > MAX_SECONDS:
        raise ValueError("the job's due time must be at most 100 years ahead")
    return due if due > now else None


_PUSH_OPTIONS = ("delay", "at", "key")


class Task(Generic[P, R]):
    """A function registered with an :class:`App`. Call it to run it here and now;
    :meth:`push` it to have a worker run it."""

    def __init__(
        self,
        app: App,
        fn: Callable[P, Awaitable[R]] | Callable[P, R],
        name: str,
        queue: str,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        max_stalls: int = 1,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"a task must be a function, not {type(fn).__name__}")
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            # Its call returns a generator, which no worker can store as a result.
            raise ConfigError(f"task {name!r}: a generator function cannot be a task")
        if timeout is not None and not 0 < timeout <= MAX_SECONDS:
            raise ConfigError(f"task {name!r}: timeout must be positive and finite, not {timeout}")
        if type(max_stalls) is not int or max_stalls < 0:
            raise ConfigError(f"task {name!r}: max_stalls must be a whole number, zero or more")
        self.app = app
        self.fn = fn
        self.name = name
        self.queue = check_queue_name(queue)
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.max_stalls = max_stalls
        self.is_async = inspect.iscoroutinefunction(fn)
        self.signature = inspect.signature(fn)
        self._good_shapes: set[tuple[int, tuple[str, ...]]] = set()
        # push(delay=..., at=...) are push options unless the function has such a parameter.
        self._option_names = set(_PUSH_OPTIONS) - set(self.signature.parameters)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        self._now: TaskCall[P, R] = TaskCall(self, None)  # a push with no options

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.queue}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Awaitable[R] | R:
        return self.fn(*args, **kwargs)

    def payload(self, args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[Payload, bytes]:
        """Check the arguments against the function and encode the job, as a push
        sends it: marked ``recorded``, the push storing its record with it (a job
        pushed any other way must not be, or the worker leaves its record short)."""
        # Whether arguments fit depends only on how many and which names: check each
        # shape once (a bulk push is usually one shape many times).
        shape = (len(args), tuple(kwargs))
        if shape not in self._good_shapes:
            try:
                self.signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"bad arguments for task {self.name!r}: {exc}") from None
            if len(self._good_shapes) < 64:
                self._good_shapes.add(shape)
        payload = Payload(self.name, list(args), dict(kwargs), recorded=True)
        return payload, payload.encode()

    def options(
        self,
        *,
        delay: float | None = None,
        at: datetime | float | None = None,
        key: str | None = None,
    ) -> TaskCall[P, R]:
        """Push with options, typed: ``task.options(delay=10).push(...)``.

        ``delay`` (seconds) or ``at`` (a datetime or epoch seconds) holds the job back
        until then. ``key`` makes the job unique: while a job with that key is queued,
        delayed or running, pushing again returns that job instead of a new one.
        """
        if key is not None and (
            not isinstance(key, str) or not key or len(key) > 128 or not utf8_ok(key)
        ):
            raise ValueError(
                f"key must be a non-empty string of at most 128 characters, with no lone "
                f"surrogate: {key!r}"
            )
        return TaskCall(self, due_time(delay, at), key)

    def _split(self, kwargs: dict[str, Any]) -> TaskCall[P, R]:
        opts = {name: kwargs.pop(name) for name in self._option_names if name in kwargs}
        return self.options(**opts)

    # With delay=/at=, the arguments cannot be checked against the function's
    # signature by a type checker (PEP 612 forbids extra keywords beside P.kwargs);
    # options(...).push(...) keeps them checked. At run time they always are.
    @overload
    def push(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]: ...
    @overload
    def push(self, *args: Any, delay: float, **kwargs: Any) -> Job[R]: ...
    @overload
    def push(self, *args: Any, at: datetime | float, **kwargs: Any) -> Job[R]: ...
    @overload
    def push(self, *args: Any, key: str, **kwargs: Any) -> Job[R]: ...

    def push(self, *args: Any, **kwargs: Any) -> Job[R]:
        """Put one job on the task's queue; returns its :class:`Job` at once.

        ``delay=`` (seconds), ``at=`` (datetime or epoch seconds) and ``key=`` (unique
        job) are push options, unless the function has a parameter of that name
        (see :meth:`options`).
        """
        call = self._split(kwargs) if kwargs else self._now
        return call.push(*args, **kwargs)

    def push_many(self, items: Iterable[ArgsItem]) -> list[Job[R]]:
        """Push many jobs in one round trip. Each item is a tuple of positional
        arguments, or a pair ``(args_tuple, kwargs_dict)``."""
        return TaskCall(self, None).push_many(items)

    @overload
    async def apush(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]: ...
    @overload
    async def apush(self, *args: Any, delay: float, **kwargs: Any) -> Job[R]: ...
    @overload
    async def apush(self, *args: Any, at: datetime | float, **kwargs: Any) -> Job[R]: ...
    @overload
    async def apush(self, *args: Any, key: str, **kwargs: Any) -> Job[R]: ...

    async def apush(self, *args: Any, **kwargs: Any) -> Job[R]:
        """:meth:`push` for asyncio code."""
        return await self._split(kwargs).apush(*args, **kwargs)

    async def apush_many(self, items: Iterable[ArgsItem]) -> list[Job[R]]:
        return await TaskCall(self, None).apush_many(items)


class TaskCall(Generic[P, R]):
    """A task with push options bound; made by :meth:`Task.options`."""

    def __init__(self, task: Task[P, R], due: float | None, key: str | None = None) -> None:
        self.task = task
        self.due = due
        self.key = key

    def _many(self, items: Iterable[ArgsItem]) -> list[tuple[Payload, bytes]]:
        out = []
        for item in items:
            if not isinstance(item, tuple):
                raise TypeError(
                    f"push_many takes tuples of arguments, not {type(item).__name__}: "
                    "write [(1,), (2,)] for one argument each"
                )
            if len(item) == 2 and isinstance(item[0], tuple) and isinstance(item[1], dict):
                out.append(self.task.payload(item[0], item[1]))
            else:
                out.append(self.task.payload(item, {}))
        return out

    def _one(self, args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[Payload, bytes]:
        payload, raw = self.task.payload(args, kwargs)
        if self.key is not None:
            payload.key = self.key
            raw = payload.encode()
        return payload, raw

    def _no_key(self) -> None:
        if self.key is not None:
            raise TypeError("key= makes one job unique: use push(), not push_many()")

    def push(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        payload, raw = self._one(args, kwargs)
        broker = self.task.app.broker
        if payload.key is not None:
            return Job(self.task.app, broker.push_unique(self.task.queue, payload, raw, self.due))
        broker.push(self.task.queue, [(payload, raw)], self.due)
        return Job(self.task.app, payload.id)

    def push_many(self, items: Iterable[ArgsItem]) -> list[Job[R]]:
        self._no_key()
        jobs = self._many(items)
        if jobs:
            self.task.app.broker.push(self.task.queue, jobs, self.due)
        return [Job(self.task.app, p.id) for p, _ in jobs]

    async def apush(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        payload, raw = self._one(args, kwargs)
        broker = self.task.app.abroker()
        if payload.key is not None:
            holder = await broker.push_unique(self.task.queue, payload, raw, self.due)
            return Job(self.task.app, holder)
        await broker.push(self.task.queue, [(payload, raw)], self.due)
        return Job(self.task.app, payload.id)

    async def apush_many(self, items: Iterable[ArgsItem]) -> list[Job[R]]:
        self._no_key()
        jobs = self._many(items)
        if jobs:
            await self.task.app.abroker().push(self.task.queue, jobs, self.due)
        return [Job(self.task.app, p.id) for p, _ in jobs]


class _Decorator(Protocol):
    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]]) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Task[P, R]: ...


class App:
    """The registry of tasks and the way to Redis.

    ``App()`` reads ``TASKQ_REDIS_URL`` (default ``redis://localhost:6379/0``);
    ``App("redis://host:6379/1")`` or ``App(settings=Settings(...))`` set it directly.
    """

    def __init__(
        self, redis_url: str | None = None, *, settings: Settings | None = None, **options: Any
    ) -> None:
        if settings is not None and (redis_url is not None or options):
            raise ConfigError("give either settings= or redis_url/options, not both")
        self.settings = settings or Settings.from_env(redis_url=redis_url, **options)
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.schedules: dict[str, CronJob] = {}
        self._broker: Broker | None = None
        self._abrokers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncBroker] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        from .config import mask_url

        return f"<App {mask_url(self.settings.redis_url)} tasks={sorted(self.tasks)}>"

    @overload
    def task(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        timeout: float | None = None,
        retries: int = 0,
        backoff: float = 1.0,
        backoff_max: float = 300.0,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        max_stalls: int = 1,
    ) -> _Decorator: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        timeout: float | None = None,
        retries: int = 0,
        backoff: float = 1.0,
        backoff_max: float = 300.0,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        max_stalls: int = 1,
    ) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(name=..., ...)``.

        ``name`` defaults to the function's name, ``queue`` to the app's first queue.
        ``timeout`` (seconds) bounds one run. A failure whose exception is one of
        ``retry_on`` runs again up to ``retries`` times, after ``backoff`` seconds,
        doubling each time up to ``backoff_max``, with jitter. A job whose worker died
        under it more than ``max_stalls`` times is dead-lettered, not run again.
        """
        policy = RetryPolicy(retries, backoff, backoff_max, tuple(retry_on))

        def register(f: Callable[..., Any]) -> Task[Any, Any]:
            if not callable(f):
                raise TypeError(f"@app.task needs a function, not {type(f).__name__}")
            task_name = name if name is not None else getattr(f, "__name__", None)
            if not isinstance(task_name, str) or not task_name:
                raise ConfigError(
                    f"a task's name must be a non-empty string, not {task_name!r}"
                    + ("" if name is not None else ": give one with @app.task(name=...)")
                )
            if task_name in self.tasks and self.tasks[task_name].fn is not f:
                raise ConfigError(
                    f"two tasks named {task_name!r}: give one a name with @app.task(name=...)"
                )
            task: Task[Any, Any] = Task(
                self, f, task_name, queue or self.settings.queues[0], timeout, policy, max_stalls
            )
            self.tasks[task_name] = task
            return task

        if fn is not None:
            return register(fn)
        return register

    def cron(
        self,
        spec: str,
        *,
        name: str | None = None,
        tz: str = "UTC",
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        **task_options: Any,
    ) -> _Decorator:
        """Run the decorated function on a schedule, as a task (``task_options`` as
        for :meth:`task`): ``@app.cron("*/5 * * * *")``. Six fields make the last one
        seconds. Workers of this app run the schedule; each tick runs once."""

        from .cron import CronJob  # croniter is imported only by apps with schedules

        def register(fn: Callable[..., Any]) -> Task[Any, Any]:
            task_name = name or fn.__name__
            # Check the schedule and its arguments before registering anything.
            job = CronJob(task_name, spec, task_name, tz, tuple(args), dict(kwargs or {}))
            try:
                inspect.signature(fn).bind(*job.args, **job.kwargs)
                # Pushed at every tick by every worker: arguments that cannot be
                # encoded would stop each of them at the first tick.
                Payload(task_name, list(job.args), job.kwargs).encode()
            except TypeError as exc:
                raise TypeError(f"cron {task_name!r}: bad arguments: {exc}") from None
            task: Task[Any, Any] = self.task(name=task_name, **task_options)(fn)
            self.schedules[task.name] = job
            return task

        return register

    def configure(self, **changes: Any) -> None:
        """Change settings (e.g. the CLI's ``--redis-url``) before the app connects."""
        if self._broker is not None:
            raise ConfigError("configure() must come before the app talks to Redis (or close())")
        self.settings = self.settings.replace(**changes)
        self._abrokers.clear()

    def job(self, job_id: str) -> Job[Any]:
        """A handle on the job with this id."""
        return Job(self, job_id)

    @property
    def broker(self) -> Broker:
        """The synchronous broker (thread-safe: each command borrows a pooled connection)."""
        if self._broker is None:
            with self._lock:
                if self._broker is None:
                    self._broker = Broker(
                        connect(self.settings.redis_url),
                        dead_retention=self.settings.dead_retention,
                        result_ttl=self.settings.result_ttl,
                    )
        return self._broker

    def abroker(self) -> AsyncBroker:
        """The asyncio broker for the running event loop."""
        loop = asyncio.get_running_loop()
        broker = self._abrokers.get(loop)
        if broker is None:
            broker = AsyncBroker(
                connect_async(self.settings.redis_url),
                result_ttl=self.settings.result_ttl,
                dead_retention=self.settings.dead_retention,
            )
            self._abrokers[loop] = broker
        return broker

    def close(self) -> None:
        """Close the synchronous client's connections."""
        if self._broker is not None:
            self._broker.close()
            self._broker = None

    async def aclose(self) -> None:
        """Close the running loop's async client."""
        broker = self._abrokers.pop(asyncio.get_running_loop(), None)
        if broker is not None:
            await broker.aclose()
