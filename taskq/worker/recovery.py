"""Recovering the jobs of dead workers, from the heartbeat thread of a live one.

A worker is dead once its heartbeat in ``taskq:{Q}:workers`` is older than the
heartbeat timeout and its own heartbeat timeout has passed too (its description in
``taskq:worker:ID`` expires then): workers given different timeouts do not judge
one another by their own. Until then its jobs are its own however long they run.
Each of a dead worker's jobs is moved atomically (one Lua call per job, which also
re-checks that the worker is still dead), so two workers sweeping at once never
requeue a job twice. Each recovery counts a stall; past ``max_stalls`` the job is a
poison job and goes to the dead letters instead of killing another worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..app import App
from ..broker import Broker, stall_key
from ..payload import BadPayload, decode
from ..writes import Writes, dead_entry

if TYPE_CHECKING:
    from ..metrics import Metrics

log = logging.getLogger(__name__)

REQUEUED, DEAD = 1, 2


class Recoverer:
    def __init__(
        self,
        app: App,
        broker: Broker,
        heartbeat_timeout: float,
        own_id: str,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.app = app
        self.broker = broker
        self.heartbeat_timeout = heartbeat_timeout
        self.own_id = own_id
        self.recovered = 0
        self.poisoned = 0

    def sweep(self, queues: Sequence[str]) -> int:
        """Recover every job of every dead worker of ``queues``; returns how many."""
        count = 0
        for queue in queues:
            dead_before = time.time() - self.heartbeat_timeout
            for worker in self.broker.dead_workers(queue, dead_before):
                if worker != self.own_id and not self.broker.worker_described(worker):
                    count += self._recover_worker(queue, worker, dead_before)
        return count

    def _recover_worker(self, queue: str, worker: str, dead_before: float) -> int:
        count = 0
        while True:
            raws = self.broker.active_jobs(queue, worker)
            if not raws:
                break
            for raw in raws:
                outcome = self._recover_job(queue, worker, raw, dead_before)
                if outcome < 0:
                    log.info("worker %s is alive again: leaving its jobs alone", worker)
                    return count
                count += outcome > 0
        if self.broker.forget_worker(queue, worker, dead_before):
            log.info("forgot dead worker %s of queue %r", worker, queue)
        return count

    def _recover_job(self, queue: str, worker: str, raw: bytes, dead_before: float) -> int:
        job_id = stall_key(raw)
        task_name = None
        max_stalls = 1
        retry_raw = raw
        payload = None
        try:
            payload, _ = decode(raw)
            task_name = payload.task
            retry_raw = payload.next_attempt().encode()
            task = self.app.tasks.get(task_name)
            if task is not None:
                max_stalls = task.max_stalls
        except (BadPayload, TypeError, ValueError):
            pass
        reason = f"killed its worker {max_stalls + 1} times (max_stalls={max_stalls})"
        entry = dead_entry(
            queue, raw, reason, job_id=job_id, task=task_name, error=f"PoisonJob: {reason}"
        )
        outcome = self.broker.recover_one(
            queue, worker, raw, max_stalls, dead_before, entry, retry_raw
        )
        if self.metrics and outcome in (REQUEUED, DEAD):
            self.metrics.count(task_name or "", "stalled" if outcome == REQUEUED else "dead")
        if outcome == REQUEUED:
            self.recovered += 1
            log.warning("job %s of dead worker %s put back on queue %r", job_id, worker, queue)
            self.broker.note_stall(job_id, worker, "queued")
        elif outcome == DEAD:
            self.poisoned += 1
            log.error("job %s %s: dead-lettered", job_id, reason)
            self.broker.note_stall(job_id, worker, "failed", error=f"PoisonJob: {reason}")
            if payload is not None and payload.key:
                self.broker.apply(Writes(scripts=[self.broker.writes.release_key(queue, payload)]))
        return outcome
