"""The worker's lease: a heartbeat refreshed from its own thread.

It runs beside the master and the loop, so a long job (even a blocking sync one)
never lets it lapse while the process lives.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import redis

from ..broker import Broker
from ..config import Settings
from ..connection import connect

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(
        self, settings: Settings, worker_id: str, queues: tuple[str, ...], concurrency: int
    ) -> None:
        self.settings = settings
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
        self._broker = Broker(connect(settings.redis_url, socket_timeout=5))
        self._thread = threading.Thread(target=self._run, name="taskq-heartbeat", daemon=True)
        self.beats = 0

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def beat(self) -> bool:
        try:
            self._broker.heartbeat(
                self.worker_id, self.queues, self.info, ttl=self.settings.heartbeat_timeout
            )
        except redis.RedisError as exc:
            log.warning("heartbeat failed: %s", exc)
            return False
        self.beats += 1
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_interval):
            self.beat()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._broker.client.close()
