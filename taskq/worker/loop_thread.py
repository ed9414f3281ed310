"""The daemon thread that owns the worker's asyncio event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from ..config import ConfigError

T = TypeVar("T")

log = logging.getLogger(__name__)

#: The event loops a worker can run its jobs on (``taskq worker --loop``).
LOOPS = ("auto", "uvloop", "asyncio")


def loop_kind(kind: str = "auto") -> str:
    """The event loop a worker asked for ``kind`` runs on: "uvloop" (libuv's, a
    dependency of taskq where it runs: not on Windows or PyPy) or "asyncio" (the
    standard library's). "auto" is uvloop where it is installed, else asyncio. On
    uvloop a worker's loop spends ~15 % less CPU a quick job; "asyncio" is there for
    code that needs the standard loop. ConfigError if uvloop is asked for and missing."""
    if kind not in LOOPS:
        raise ConfigError(f"unknown event loop {kind!r}: choose one of {', '.join(LOOPS)}")
    if kind == "asyncio":
        return kind
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if kind == "uvloop":
            raise ConfigError(
                "the uvloop event loop is not installed (pip install uvloop; it does not "
                "run on Windows): use --loop asyncio"
            ) from None
        return "asyncio"
    return "uvloop"


def new_event_loop(kind: str = "auto") -> asyncio.AbstractEventLoop:
    """A new event loop of ``kind`` (see :func:`loop_kind`)."""
    if loop_kind(kind) == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class LoopThread:
    """Runs an event loop (of ``kind``: see :func:`new_event_loop`) forever in a
    daemon thread.

    Start it, feed it coroutines with :meth:`submit` (``run_coroutine_threadsafe``),
    and :meth:`stop` it: the loop is stopped, the thread joined, then the loop closed.
    """

    def __init__(self, name: str = "taskq-loop", kind: str = "auto") -> None:
        self.loop = new_event_loop(kind)
        self._ready = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        while True:
            try:
                self.loop.run_forever()
                return
            except (SystemExit, KeyboardInterrupt) as exc:
                # asyncio raises an asyncio task's SystemExit or KeyboardInterrupt out
                # of run_forever as well as into whatever awaits that task (a job,
                # which fails with it): the loop runs on for the other jobs.
                log.warning("a job's asyncio task raised %r; the event loop runs on", exc)
                if self._stopping:  # a stop asked for meanwhile may have been undone
                    return

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(timeout=10):
            raise RuntimeError("the event loop thread did not start")

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result from another thread."""
        return self.submit(coro).result(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop, join the thread and close the loop. Idempotent."""
        if self.loop.is_closed():
            return
        self._stopping = True
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()
