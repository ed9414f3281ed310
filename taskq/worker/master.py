"""The worker: its main thread is the master that takes jobs off Redis.

Threads and who owns what:

* the master (the thread that calls :meth:`Worker.run`, normally the main thread)
  takes jobs with its own sync Redis client, as many as there are free slots plus
  the prefetch, and hands them to the loop thread with ``run_coroutine_threadsafe``.
* the loop thread runs the asyncio event loop; jobs run there concurrently, and
  their outcomes are stored in batches with the loop's own async client. The
  runner's callbacks (a run ended, an outcome stored) run there too: they only
  update counters under ``_slots``.
* plain ``def`` tasks run in :class:`DaemonExecutor` threads, never on the loop.
* the heartbeat thread keeps the worker's lease alive with its own sync client.

Signal handlers only record the signal; the master reacts (first: drain, second: stop
at once). Shutdown is ordered: stop fetching, wait up to ``grace`` seconds, cancel
what is left, stop the loop and join its thread, put unfinished jobs back at the
front of their queue, close the clients, log one summary line.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import logging
import os
import re
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from ..abroker import AsyncBroker
from ..app import App
from ..broker import Broker
from ..config import MULTIPROC_ENV, mask_url
from ..connection import REDIS_ERRORS, connect, connect_async
from .executor import DaemonExecutor, DaemonThreadPool
from .heartbeat import Heartbeat
from .loop_thread import LoopThread, loop_kind
from .runner import JobRunner

if TYPE_CHECKING:
    from ..cron import Scheduler
    from ..metrics import Metrics, MetricsServer

log = logging.getLogger(__name__)

#: Longest the master blocks inside Redis waiting for a job, so it notices shutdown.
BLOCK_SECONDS = 1.0
#: Without ``prefetch=``, a worker takes ahead only the jobs it expects to start
#: within this many seconds, at most AUTO_PREFETCH_MAX of them: quick jobs then never
#: wait for a round trip to Redis, and long jobs are not held back from idle workers.
#: Jobs start as fast as runs end, so the expectation is the rate at which runs ended
#: over the last PREFETCH_WINDOW seconds or more. (An average of run times served
#: worse: on a busy loop quick jobs' runs stretch while they wait their turn, which
#: shrank the prefetch just when the master's fetches were slowest, waiting for the
#: GIL at each system call.) The master fetches again once half have started: the
#: fewer its fetches, the less it takes the GIL from the loop (noop jobs: 20 ms ahead
#: cost the loop ~3 % more CPU per job than 50 ms). Jobs held beyond it when runs turn
#: slow go back to their queue (see :meth:`JobRunner._give_back_excess`).
AUTO_PREFETCH_WAIT = 0.05
AUTO_PREFETCH_MAX = 1000
PREFETCH_WINDOW = 0.1
#: The first window is shorter. Until it ends nothing is taken ahead, and a worker
#: started on a deep queue of quick jobs runs at about half speed (the master fetches
#: each time a few slots free); a few hundred runs measure the rate as well. A window
#: ends only as a run ends, so a burst of quick jobs followed by slow ones does not end
#: it early: it ends with the first slow run, at the slow rate.
PREFETCH_FIRST_WINDOW = 0.02
#: How often the master looks for abort requests (a running job is cancelled within
#: about this long), and how long an unclaimed request is kept.
ABORT_POLL = 0.5
ABORT_POLL_IDLE = 5.0  # with nothing running, only jobs waiting can be aborted
ABORT_FORGET = 86_400.0
#: In a payload, the mark of a job run again (see _dispatch).
_RETRIED = b'"attempts":'
#: Jobs whose run ended but whose outcome is not stored yet (a slow Redis) that a
#: worker lets pile up before it takes no more jobs.
MAX_UNSTORED = 1000
#: While busy, how often the master looks for due delayed jobs.
PROMOTE_EVERY = 0.1
#: After the grace period, how long cancelled jobs get to unwind.
CANCEL_SECONDS = 5.0
_MAX_BACKOFF = 10.0


class WorkerError(RuntimeError):
    """The worker cannot start (Redis unreachable, bad settings)."""


@dataclass
class WorkerStats:
    done: int = 0
    failed: int = 0
    dead: int = 0
    retried: int = 0
    aborted: int = 0
    put_back: int = 0

    def summary(self) -> str:
        return (
            f"{self.done} done, {self.failed} failed, {self.retried} retried, "
            f"{self.dead} dead-lettered, {self.put_back} put back"
        )


def make_worker_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_.\-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker:
    """Runs the jobs of ``app`` from its queues until stopped.

    ``burst=True`` returns once the queues are empty and nothing is running.
    ``handle_signals`` installs SIGINT/SIGTERM handlers (main thread only).
    ``loop``: the event loop the jobs run on, "auto" (uvloop where installed),
    "uvloop" or "asyncio" (see :func:`~taskq.worker.loop_thread.loop_kind`).
    """

    def __init__(
        self,
        app: App,
        *,
        queues: tuple[str, ...] | None = None,
        concurrency: int | None = None,
        grace: float | None = None,
        heartbeat_timeout: float | None = None,
        prefetch: int | None = None,
        metrics_port: int | None = None,
        burst: bool = False,
        handle_signals: bool = True,
        loop: str = "auto",
    ) -> None:
        self.app = app
        self.loop_kind = loop_kind(loop)  # refused here, before anything starts
        self.settings = app.settings.replace(
            queues=queues, concurrency=concurrency, grace=grace, heartbeat_timeout=heartbeat_timeout
        )
        self.queues = self.settings.queues
        self.concurrency = self.settings.concurrency
        # Jobs taken beyond the running ones, so the loop never waits for a fetch.
        # They are in the worker's active list in Redis, like every taken job.
        # None: adapt to how fast runs end (see AUTO_PREFETCH_WAIT).
        self.prefetch = prefetch
        # Runs ended since the prefetch was last worked out, and when (guarded by _slots).
        self._window_ends = 0
        self._window_start: float | None = None
        self._window = PREFETCH_FIRST_WINDOW
        self._set_prefetch(prefetch or 0)
        self.burst = burst
        self.metrics_port = metrics_port
        self.metrics: Metrics | None = None
        self.handle_signals = handle_signals
        self.id = make_worker_id()
        self.stats = WorkerStats()
        self.started = threading.Event()  # set once jobs can be taken (for callers and tests)
        self._slots = threading.Condition()
        # Guarded by _slots: jobs handed to the loop whose outcome is not stored yet,
        # those of them still running, and how many runs and outcomes have ended
        # (any way) so far.
        self._in_flight = 0
        self._running = 0
        self._completions = 0
        # Loop thread only: what ended since the master's counts were last brought up
        # to date (once per loop pass, not a lock per job): runs over, of which real
        # runs, and outcomes by status.
        self._ran = self._runs = 0
        self._ended: dict[str, int] = {}
        self._tally_due = False
        self._promote_at = 0.0
        self._aborts_at = self._aborts_busy_at = 0.0
        self._cron: Scheduler | None = None
        if app.schedules:
            from ..cron import Scheduler  # croniter is imported only when schedules exist

            self._cron = Scheduler(list(app.schedules.values()))
        self._had_aborts = False
        self._next_due: float | None = None
        self._signals: list[str] = []
        self._stop_reason: str | None = None
        self._broker: Broker | None = None
        self._loop: LoopThread | None = None
        self._runner: JobRunner | None = None

    # -- control ---------------------------------------------------------------------
    def stop(self, reason: str = "stop requested") -> None:
        """Ask the worker to drain and stop; calling it again skips the grace wait.

        Safe from any thread and from signal handlers (it only records the request).
        """
        self._signals.append(reason)

    @property
    def stopping(self) -> bool:
        return bool(self._signals)

    @property
    def hard_stop(self) -> bool:
        return len(self._signals) > 1

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        self.stop(name)

    # -- the master loop -------------------------------------------------------------
    def run(self) -> WorkerStats:
        """Take and run jobs until stopped (or, in burst mode, until idle)."""
        previous = self._install_signals()
        url = mask_url(self.settings.redis_url)
        try:
            client = connect(self.settings.redis_url, socket_timeout=BLOCK_SECONDS + 10)
            client.ping()
        except REDIS_ERRORS as exc:
            self._restore_signals(previous)
            raise WorkerError(f"cannot reach Redis at {url}: {exc}") from None
        self._broker = broker = Broker(
            client, dead_retention=self.settings.dead_retention, result_ttl=self.settings.result_ttl
        )
        try:
            metrics_server = self._start_metrics()
        except OSError as exc:
            broker.close()
            self._restore_signals(previous)
            raise WorkerError(f"cannot serve metrics on port {self.metrics_port}: {exc}") from None
        executor = DaemonExecutor()
        self._loop = LoopThread(kind=self.loop_kind)
        # asyncio.to_thread and run_in_executor(None, ...) in jobs: the standard
        # executor's threads are joined at exit, so one still blocked would hold a
        # worker's exit after its grace period. Bounded as the standard one is.
        self._loop.loop.set_default_executor(
            DaemonThreadPool("taskq-to-thread", max_workers=min(32, (os.cpu_count() or 1) + 4))
        )
        self._loop.start()
        self._runner = self._loop.call(self._make_runner(executor))
        heartbeat = Heartbeat(
            self._app_with_settings(), self.id, self.queues, self.concurrency, self.metrics
        )
        heartbeat.start()
        log.info(
            "worker %s started: queues %s, concurrency %d, %s loop, redis %s",
            self.id,
            ",".join(self.queues),
            self.concurrency,
            self.loop_kind,
            url,
        )
        try:
            if self._cron is not None:
                self._publish_cron(broker)
            self.started.set()
            self._fetch_loop(broker)
        finally:
            self._shutdown(broker, executor, heartbeat)
            if metrics_server is not None:
                metrics_server.close()
            self._restore_signals(previous)
        return self.stats

    def _app_with_settings(self) -> App:
        """The app as this worker sees it (its own queue/heartbeat settings applied)."""
        if self.app.settings == self.settings:
            return self.app
        view = copy.copy(self.app)
        view.settings = self.settings
        return view

    async def _make_runner(self, executor: DaemonExecutor) -> JobRunner:
        client = connect_async(self.settings.redis_url)
        broker = AsyncBroker(
            client, result_ttl=self.settings.result_ttl, dead_retention=self.settings.dead_retention
        )
        return JobRunner(
            self.app,
            broker,
            self.id,
            executor,
            self.concurrency,
            self._job_ran,
            self._job_done,
            self.metrics,
            ahead=None if self.prefetch is not None else self._prefetched,
            promote_within=BLOCK_SECONDS,  # the longest the master may not look
        )

    def _start_metrics(self) -> MetricsServer | None:
        """Serve metrics if asked; a child of ``--processes`` only records them (its
        supervisor serves the sum). prometheus-client is imported only then."""
        if self.metrics_port is None and not os.environ.get(MULTIPROC_ENV):
            return None
        from ..metrics import Metrics, serve

        if self.metrics_port is not None:
            server = serve(
                self.metrics_port,
                Broker(connect(self.settings.redis_url, socket_timeout=5)),
                self.settings.heartbeat_timeout,
            )
            self.metrics = Metrics(server.registry)
            return server
        self.metrics = Metrics()  # a supervised child: write for the parent to serve
        return None

    def _fetch_loop(self, broker: Broker) -> None:
        backoff = 0.0
        while not self.stopping:
            free = self._wait_for_slot(ABORT_POLL)
            seen = self._completions
            try:
                self._poll_aborts(broker)  # these two also while every slot is busy
                self._run_cron(broker)
                if free == 0:
                    continue
                self._put_back_lost(broker)
                got = self._take(broker, free)
                backoff = 0.0
            except REDIS_ERRORS as exc:
                backoff = min(max(backoff * 2, 0.25), _MAX_BACKOFF)
                log.warning("redis error while taking jobs (%s); retrying in %.2fs", exc, backoff)
                self._pause(backoff)
                continue
            if got == 0 and self.burst:
                self._burst_wait(seen)

    def _put_back_lost(self, broker: Broker) -> None:
        """A blocking wait whose reply was lost may have moved a job into this worker's
        active list that it never saw. Once the worker holds no job, all that is left
        in that list is such a job, or one left there on purpose (its outcome could not
        be stored, its task was cancelled by a job's code), which would run again once
        the worker stopped: put them back on their queue now."""
        lost = broker.lost_waits
        if not lost:
            return
        with self._slots:
            if self._in_flight:
                return
        for queue in sorted(lost):
            ids = broker.put_back(queue, self.id)
            lost.discard(queue)
            if ids:
                log.warning(
                    "put back %d job(s) of queue %r that a lost connection had left unseen",
                    len(ids),
                    queue,
                )

    def _promote_due(self, broker: Broker) -> None:
        """Move due delayed jobs (delayed pushes, retries) onto their queues.

        Looked at every PROMOTE_EVERY seconds while busy, and at each due time.
        """
        now = time.time()
        if now < self._promote_at:
            return
        next_due: float | None = None
        for queue in self.queues:
            _, due = broker.promote(queue, now)
            if due is not None:
                next_due = due if next_due is None else min(next_due, due)
        self._next_due = next_due
        self._promote_at = (
            now + PROMOTE_EVERY if next_due is None else min(next_due, now + PROMOTE_EVERY)
        )

    def _poll_aborts(self, broker: Broker) -> None:
        """Pass pending abort requests to the loop: every ABORT_POLL seconds while jobs
        run, every ABORT_POLL_IDLE seconds otherwise."""
        now = time.time()
        if now < self._aborts_at and not (self._running and now >= self._aborts_busy_at):
            return
        self._aborts_at = now + ABORT_POLL_IDLE
        self._aborts_busy_at = now + ABORT_POLL
        requested: set[str] = set()
        for queue in self.queues:
            requested |= broker.abort_requests(queue, now - ABORT_FORGET)
        if requested or self._had_aborts:
            assert self._loop is not None
            assert self._runner is not None
            self._loop.loop.call_soon_threadsafe(self._runner.abort, requested)
        self._had_aborts = bool(requested)

    def _run_cron(self, broker: Broker) -> None:
        """Push the job of every schedule whose tick has come, if this worker wins the
        tick (one SET NX per tick: exactly once across workers)."""
        if self._cron is None:
            return
        now = time.time()
        due = self._cron.due(now)
        for job, tick in due:
            ttl = max(3600.0, 2 * job.period())
            if not broker.claim_tick(job.name, tick, self.id, ttl):
                continue
            task = self.app.tasks[job.task]
            payload, _ = task.payload(job.args, job.kwargs)
            payload.id = f"cron-{job.name}-{int(tick)}"
            broker.push(task.queue, [(payload, payload.encode())])
            log.info(
                "cron %s: pushed job %s for tick %s",
                job.name,
                payload.id,
                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(tick)),
            )
        if due:
            self._publish_cron(broker)

    def _publish_cron(self, broker: Broker) -> None:
        assert self._cron is not None
        broker.publish_schedules(
            {job.name: job.info(self._cron.next_at[job.name]) for job in self._cron.jobs}
        )

    def _block_seconds(self) -> float:
        """How long to block in Redis: about a second; less if a delayed job is due,
        or while jobs run (so that an abort reaches them within a second)."""
        timeout = BLOCK_SECONDS
        if self._running:
            timeout = min(timeout, ABORT_POLL)
        if self._cron is not None:
            next_tick = self._cron.next_due()
            if next_tick is not None:
                timeout = min(timeout, next_tick - time.time())
        if self._next_due is not None:
            timeout = min(timeout, self._next_due - time.time())
        return max(timeout, 0.01)  # 0 would block forever

    def _take(self, broker: Broker, free: int) -> int:
        """Take up to ``free`` jobs; block inside Redis only if every queue is empty.
        A queue whose last fetch went unanswered is asked again first (see
        :meth:`Broker.fetch`): the jobs it moved are this worker's to run."""
        self._promote_due(broker)
        for queue in (*broker.unsettled(), *self.queues):
            raws = broker.fetch(queue, self.id, free)
            if raws:
                self._dispatch(broker, queue, raws)
                return len(raws)
        if self.burst:
            return 0
        # All empty: block inside Redis until a job comes to any of them.
        got = broker.fetch_blocking_any(self.queues, self.id, self._block_seconds())
        for queue, raw in got:
            self._dispatch(broker, queue, [raw])
        return len(got)

    def _dispatch(self, broker: Broker, queue: str, raws: list[bytes]) -> None:
        """Hand jobs to the loop thread: one ``run_coroutine_threadsafe`` per batch
        taken in one round trip, each job then a task of its own on the loop."""
        assert self._loop is not None
        assert self._runner is not None
        # One search of the whole batch: `bytes in bytes` a job first tries its
        # argument as an int, and raises and catches a TypeError (~1.8k instructions
        # a job). A newline cannot join two jobs' bytes into the mark.
        if _RETRIED in b"\n".join(raws):
            # A job run again (a retry): an abort asked while its last run ended may
            # wait in Redis, unread by this worker yet. Read first, so the runner has
            # it before the job starts (both go through the loop, in order).
            self._aborts_at = 0.0
            self._poll_aborts(broker)
        with self._slots:
            self._in_flight += len(raws)
            self._running += len(raws)
        self._loop.submit(self._runner.run_batch(queue, raws))

    def _prefetched(self) -> int:
        """The jobs the automatic prefetch wants taken ahead now."""
        return self.capacity - self.concurrency

    def _set_prefetch(self, prefetch: int) -> None:
        self.capacity = self.concurrency + prefetch
        self._refill = max(1, prefetch // 2)  # free slots worth waking the master for

    def _adapt_prefetch(self, now: float, runs: int = 1) -> None:
        """Count ``runs`` runs that ended by ``now`` (monotonic seconds); once a window
        has passed, take ahead what starts within AUTO_PREFETCH_WAIT seconds at the
        rate runs ended in it (call under ``_slots``, automatic prefetch only)."""
        if self._window_start is None:
            self._window_start = now
        self._window_ends += runs
        elapsed = now - self._window_start
        if elapsed < self._window:
            return
        ahead = self._window_ends / elapsed * AUTO_PREFETCH_WAIT
        self._set_prefetch(min(AUTO_PREFETCH_MAX, int(ahead)))
        self._window_start, self._window_ends = now, 0
        self._window = PREFETCH_WINDOW

    def _free(self) -> int:
        """Slots free for jobs (call under ``_slots``). Jobs whose outcome is not yet
        stored do not hold a slot, but at most MAX_UNSTORED of them may pile up."""
        if self._in_flight - self._running >= MAX_UNSTORED:
            return 0
        return max(0, self.capacity - self._running)  # prefetch may have shrunk

    def _job_ran(self, run_time: float | None) -> None:
        """Called on the loop thread as each job's run ends (``run_time`` seconds;
        None if it did not run), before its outcome is stored: its slot is free."""
        self._ran += 1
        if run_time is not None:
            self._runs += 1
        if not self._tally_due:
            self._tally_soon()

    def _job_done(self, status: str, count: int) -> None:
        """Called on the loop thread as jobs are over (``count`` of them, ``status``):
        their outcome stored, or they were cancelled, or their outcome could not be
        stored (they stay active)."""
        ended = self._ended
        ended[status] = ended.get(status, 0) + count
        if not self._tally_due:
            self._tally_soon()

    def _tally_soon(self) -> None:
        assert self._loop is not None
        self._tally_due = True
        self._loop.loop.call_soon(self._tally)

    def _tally(self) -> None:
        """Bring the master's counts up to date with the runs and outcomes that ended
        this loop pass (on the loop thread; on the master once the loop has stopped).
        The master is woken once enough slots are free to be worth a fetch (half the
        prefetch), when nothing runs or nothing is left, or when a retry is due."""
        self._tally_due = False
        ran, runs, ended = self._ran, self._runs, self._ended
        if not ran and not ended:
            return
        self._ran = self._runs = 0
        self._ended = {}
        stats = self.stats
        with self._slots:
            self._running -= ran
            self._completions += ran
            if runs and self.prefetch is None:
                self._adapt_prefetch(time.monotonic(), runs)
            for status, n in ended.items():
                self._in_flight -= n
                self._completions += n
                if status in ("done", "failed", "dead", "aborted"):
                    setattr(stats, status, getattr(stats, status) + n)
                elif status == "scheduled":
                    stats.retried += n
                    self._promote_at = 0.0  # an immediate retry is due now: look at once
            if not self._running or not self._in_flight or self._free() >= self._refill:
                self._slots.notify_all()

    def _wait_for_slot(self, timeout: float) -> int:
        """Block until enough slots are free, a stop is requested or ``timeout``
        passes; return the free slots (0 if stopping)."""
        deadline = time.monotonic() + timeout
        with self._slots:
            while self._free() < self._refill and not self.stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._slots.wait(min(left, 0.25))
            return 0 if self.stopping else self._free()

    def _burst_wait(self, seen: int) -> None:
        """Queues are empty: stop if no job is left (run and stored: a retry must be
        stored to be seen), else wait for a job's run or outcome to end (it may push
        more jobs)."""
        with self._slots:
            if not self._in_flight and self._completions == seen:
                self.stop("burst: queues empty")
                return
            while self._completions == seen and not self.stopping:
                self._slots.wait(0.25)

    def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.1, deadline - time.monotonic()))

    # -- shutdown --------------------------------------------------------------------
    def _drain(self) -> None:
        """Let running jobs finish for up to ``grace`` seconds (not after a second signal)."""
        deadline = time.monotonic() + self.settings.grace
        with self._slots:
            while self._in_flight and not self.hard_stop:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._slots.wait(min(left, 0.1))

    def _cancel_running(self) -> None:
        assert self._loop is not None
        assert self._runner is not None
        try:
            self._loop.call(self._runner.cancel_running(CANCEL_SECONDS), timeout=CANCEL_SECONDS + 1)
        except concurrent.futures.TimeoutError:
            log.warning("some cancelled jobs did not unwind within %.0fs", CANCEL_SECONDS)

    def _shutdown(self, broker: Broker, executor: DaemonExecutor, heartbeat: Heartbeat) -> None:
        reason = self._signals[0] if self._signals else "error"
        assert self._loop is not None
        assert self._runner is not None
        self._loop.loop.call_soon_threadsafe(self._runner.stop_starting)
        if self._in_flight:
            log.info(
                "stopping (%s): waiting up to %gs for %d running job(s)",
                reason,
                self.settings.grace,
                self._in_flight,
            )
        self._drain()
        self._cancel_running()
        try:
            self._loop.call(self._runner.close(), timeout=10)
        except Exception as exc:
            log.debug("closing the loop's redis client: %r", exc)
        self._loop.stop()
        if self._loop.loop.is_closed():  # its thread is over (not stuck past the timeout)
            self._tally()  # what ended in the loop's last pass
        executor.shutdown(wait=False)
        for queue in self.queues:
            try:
                self.stats.put_back += len(broker.put_back(queue, self.id))
            except REDIS_ERRORS as exc:
                log.error(
                    "could not put back the unfinished jobs of queue %r (%s): they stay "
                    "in %s and are recovered once this worker's heartbeat expires",
                    queue,
                    exc,
                    broker.keys.active(queue, self.id),
                )
        heartbeat.stop()
        with contextlib.suppress(*REDIS_ERRORS):
            broker.unregister(self.id, self.queues)
        broker.close()
        log.info("worker %s stopped (%s): %s", self.id, reason, self.stats.summary())

    # -- signals ---------------------------------------------------------------------
    def _install_signals(self) -> dict[int, Any]:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, self._on_signal)
        return previous

    def _restore_signals(self, previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
