"""A thread pool for plain ``def`` tasks whose threads never hold the process open."""

from __future__ import annotations

import concurrent.futures
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class DaemonExecutor(concurrent.futures.Executor):
    """Runs sync tasks in daemon threads, growing as needed.

    The standard ThreadPoolExecutor joins its threads at interpreter exit, so one
    stuck sync task would hang a worker's shutdown forever. A thread cannot be
    killed, so a sync task that outlives its timeout or the grace period keeps its
    thread until it returns, and a new thread serves the next job; at exit such
    threads are abandoned (their jobs were already put back or failed).
    """

    def __init__(self, name: str = "taskq-sync", max_workers: int | None = None) -> None:
        """``max_workers``: at most this many threads at once (None: no bound); work
        beyond waits its turn, as in a ThreadPoolExecutor."""
        self._name = name
        self._max = max_workers
        self._work: queue.SimpleQueue[
            tuple[concurrent.futures.Future[Any], Callable[[], Any]] | None
        ] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._threads: list[threading.Thread] = []
        self._shutdown = False

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        ctx = contextvars.copy_context()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("executor is shut down")
            if self._idle <= 0 and (self._max is None or len(self._threads) < self._max):
                thread = threading.Thread(
                    target=self._serve, daemon=True, name=f"{self._name}-{len(self._threads)}"
                )
                self._threads.append(thread)
                self._idle += 1
                thread.start()
            self._idle -= 1
        self._work.put((future, lambda: ctx.run(fn, *args, **kwargs)))
        return future

    def _serve(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            future, call = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(call())
                except BaseException as exc:
                    future.set_exception(exc)
            with self._lock:
                self._idle += 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            threads = list(self._threads)
        for _ in threads:
            self._work.put(None)
        if wait:
            for thread in threads:
                thread.join()


class DaemonThreadPool(concurrent.futures.ThreadPoolExecutor):
    """A bounded :class:`DaemonExecutor` that asyncio takes as a loop's default
    executor (it insists on a ThreadPoolExecutor): asyncio.to_thread and
    ``run_in_executor(None, ...)`` in jobs then never hold a worker's exit. None of
    the standard pool's own threads is ever started."""

    def __init__(self, name: str, max_workers: int) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=name)
        self._daemons = DaemonExecutor(name, max_workers=max_workers)

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        return self._daemons.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._daemons.shutdown(wait, cancel_futures=cancel_futures)
        super().shutdown(wait=False)
