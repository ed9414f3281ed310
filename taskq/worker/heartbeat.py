"""The worker's lease: a heartbeat refreshed from its own thread, which also
recovers the jobs of dead workers.

It runs beside the master and the loop, so a long job (even a blocking sync one)
never lets the lease lapse while the process lives.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING

from ..app import App
from ..broker import Broker
from ..connection import REDIS_ERRORS, connect
from .recovery import Recoverer

if TYPE_CHECKING:
    from ..metrics import Metrics

log = logging.getLogger(__name__)

#: How often a worker deletes the dead letters of its queues past their retention.
TRIM_EVERY = 60.0


class Heartbeat:
    def __init__(
        self,
        app: App,
        worker_id: str,
        queues: tuple[str, ...],
        concurrency: int,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = app.settings
        self.worker_id = worker_id
        self.queues = queues
        self.info = {
            "host": socket.gethostname(),
            "pid": str(os.getpid()),
            "queues": ",".join(queues),
            "concurrency": str(concurrency),
            "started_at": repr(time.time()),
        }
        self._stop = threading.Event()
        self._broker = Broker(
            connect(self.settings.redis_url, socket_timeout=5),
            dead_retention=self.settings.dead_retention,
            result_ttl=self.settings.result_ttl,
        )
        self.recoverer = Recoverer(
            app, self._broker, self.settings.heartbeat_timeout, worker_id, metrics
        )
        self._thread = threading.Thread(target=self._run, name="taskq-heartbeat", daemon=True)
        self._failing = False
        self._trim_at = 0.0  # when to trim dead letters next (at once: see _trim_dead)

    def start(self) -> None:
        """Register (so this worker's jobs are never taken for a dead worker's), then
        recover what dead workers left, then keep beating in the background."""
        self.beat()
        self._thread.start()

    def beat(self) -> None:
        try:
            self._broker.heartbeat(
                self.worker_id, self.queues, self.info, ttl=self.settings.heartbeat_timeout
            )
            self.recoverer.sweep(self.queues)
            self._trim_dead()
        except REDIS_ERRORS as exc:
            if not self._failing:
                log.warning(
                    "heartbeat failed, retrying every %.1fs: %s",
                    self.settings.heartbeat_interval,
                    exc,
                )
            self._failing = True
            return
        except Exception:  # a bug in recovery or trimming must not end the lease
            log.exception(
                "recovering dead workers' jobs or trimming dead letters failed; "
                "the heartbeat goes on"
            )
            return
        if self._failing:
            log.info("heartbeat back")
            self._failing = False

    def _trim_dead(self) -> None:
        """Delete dead letters past their retention, every TRIM_EVERY seconds."""
        now = time.time()
        if now < self._trim_at:
            return
        self._trim_at = now + TRIM_EVERY
        for queue in self.queues:
            trimmed = self._broker.trim_dead(queue, now - self.settings.dead_retention)
            if trimmed:
                log.info("deleted %d dead letter(s) of queue %r past retention", trimmed, queue)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_interval):
            self.beat()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=10)
        self._broker.close()
