"""Every Redis key taskq uses: the one place they are spelled.

Key space (``Q`` is a queue name, ``W`` a worker id, ``ID`` a job id). Keys of one
queue share the hash tag ``{Q}``, so every script touching them stays in one Redis
Cluster slot; a job record is written beside them in the same pipeline, never in
the same script.

=============================  ======  ==================================================
key                            type    holds / lifetime
=============================  ======  ==================================================
``taskq:{Q}:queue``            list    jobs waiting (JSON, see :mod:`taskq.payload`);
                                       producers LPUSH, workers take from the right
``taskq:{Q}:active:W``         list    jobs worker W has taken and not yet finished;
                                       a job leaves only once its outcome is written
``taskq:{Q}:fetched:W``        string  W's last fetch: its number and job count (a
                                       fetch whose reply was lost is sent again); a day
``taskq:{Q}:delayed``          zset    raw job -> time it is due (delayed pushes and
                                       retries waiting for their backoff)
``taskq:{Q}:pushed:P``         string  on a Redis Cluster only: push P queued its jobs
                                       (its client may send it again, having lost
                                       the reply: then it queues nothing); two
                                       minutes
``taskq:{Q}:workers``          zset    W -> time of W's last heartbeat; a W older than
                                       the heartbeat timeout is dead, its jobs recovered
``taskq:{Q}:stalls``           hash    ID -> times the job's worker died under it;
                                       removed when the job ends
``taskq:{Q}:unique:K``         string  id of the job holding unique key K; deleted when
                                       that job ends (done, failed, aborted)
``taskq:{Q}:aborts``           hash    ID -> time an abort was asked for a job that was
                                       not waiting (running, or taken): its worker
                                       cancels it; entries go when handled, or after a day
``taskq:{Q}:stats``            hash    counters: done, failed, retried, stalled, dead,
                                       aborted
``taskq:{Q}:dead``             zset    dead-letter ID -> time it died; entries older than
                                       ``dead_retention`` are trimmed (and counted)
``taskq:{Q}:dead:data``        hash    dead-letter ID -> JSON: reason, error, traceback,
                                       attempts and the job's raw payload
``taskq:queues``               set     names of queues that ever had a job pushed
``taskq:cron``                 hash    schedule name -> JSON: spec, task, next run
``taskq:cron:NAME:T``          string  the worker that claimed tick T of schedule NAME;
                                       expires after two periods (at least an hour)
``taskq:job:ID``               hash    the job's record (status, task, args, times,
                                       worker, result or error); expires ``result_ttl``
                                       seconds after the job ends
``taskq:worker:W``             hash    W's host, pid, queues, start time; expires with
                                       W's heartbeat
=============================  ======  ==================================================
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "taskq"


@dataclass(frozen=True)
class Keys:
    prefix: str = PREFIX

    def queue(self, q: str) -> str:
        return f"{self.prefix}:{{{q}}}:queue"

    def active(self, q: str, worker: str) -> str:
        return f"{self.prefix}:{{{q}}}:active:{worker}"

    def fetched(self, q: str, worker: str) -> str:
        return f"{self.prefix}:{{{q}}}:fetched:{worker}"

    def delayed(self, q: str) -> str:
        return f"{self.prefix}:{{{q}}}:delayed"

    def pushed(self, q: str, push: str) -> str:
        return f"{self.prefix}:{{{q}}}:pushed:{push}"

    def push_target(self, q: str, due: float | None) -> tuple[str, str]:
        """Where a push puts its jobs, and that key's type: the queue, or the delayed
        set for jobs due later."""
        return (self.queue(q), "list") if due is None else (self.delayed(q), "zset")

    def workers(self, q: str) -> str:
        return f"{self.prefix}:{{{q}}}:workers"

    def stalls(self, q: str) -> str:
        return f"{self.prefix}:{{{q}}}:stalls"

    def unique(self, q: str, key: str) -> str:
        return f"{self.prefix}:{{{q}}}:unique:{key}"

    def aborts(self, q: str) -> str:
        return f"{self.prefix}:{{{q}}}:aborts"

    def stats(self, q: str) -> str:
        return f"{self.prefix}:{{{q}}}:stats"

    def dead(self, q: str) -> str:
        return f"{self.prefix}:{{{q}}}:dead"

    def dead_data(self, q: str) -> str:
        return f"{self.prefix}:{{{q}}}:dead:data"

    def cron(self) -> str:
        return f"{self.prefix}:cron"

    def cron_tick(self, name: str, tick: float) -> str:
        return f"{self.prefix}:cron:{name}:{int(tick)}"

    def queues(self) -> str:
        return f"{self.prefix}:queues"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def worker(self, worker: str) -> str:
        return f"{self.prefix}:worker:{worker}"
