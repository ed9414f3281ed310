"""The changes taskq makes to Redis, built once for both the sync and async brokers.

A :class:`Writes` holds one or more logical changes in three phases: commands on job
records (any slot), then commands on queue keys, then Lua scripts on queue keys.
Applying it keeps that order, which is what makes a cut-short write safe: a job's
outcome is stored before the job leaves its active list, so a crash in between makes
it run again rather than vanish.

* On one Redis, a :class:`Writes` is one pipeline: one round trip, in order.
* On a Redis Cluster, each phase is a round trip of its own (a cluster pipeline
  runs on several nodes at once, so only separate round trips keep the order, and
  it cannot carry scripts).

Many jobs' writes merge into one :class:`Writes` (see :meth:`Writes.merge`), which
is how a worker stores a batch of outcomes in one round trip. Merging moves a later
write's commands ahead of an earlier write's scripts, so a merged batch must end
with the first write that has scripts (:func:`take_batch`).
"""

from __future__ import annotations

import base64
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from . import scripts
from .keys import Keys
from .payload import Payload, dumps, new_id, utf8_safe

#: One command on one key: (name, key, other arguments), e.g. ("LREM", key, (1, raw)).
#: Arguments are str, bytes, int or float: both packers (hiredis's and redis-py's) send
#: a float as its repr, which reads back exactly, so the hot paths leave them as they are.
Command = tuple[str, str, tuple[Any, ...]]
ScriptCall = tuple[str, list[str], list[Any]]  # (Lua source, KEYS, ARGV)
#: A job that ended "done", as only the values its outcome needs: (job key, active
#: list, result TTL, raw job, result JSON, finished at), then, if its start was not
#: stored on its own, its start values (see :func:`start_values`). Its two times
#: (finished at, and started at, the last start value) are text, in whole
#: microseconds (:func:`stamp`): hiredis packs a float through its repr, ~0.5 us
#: each, and turning whole microseconds into seconds in Lua cost Redis ~0.4 us each.
DoneRow = tuple[Any, ...]
#: A job done as its "done" row alone, with the stats hash that counts it (see
#: :meth:`WriteBuilder.done`).
JobDone = tuple[DoneRow, str]
#: What a job's start stores: all of them for a job whose record was not stored as
#: it was pushed (a raw LPUSH), else the last three, what a run adds.
START_FIELDS = (
    "task",
    "queue",
    "args",
    "kwargs",
    "enqueued_at",
    "attempts",
    "worker",
    "started_at",
)


def hset(key: str, fields: dict[str, Any]) -> Command:
    return ("HSET", key, tuple(itertools.chain.from_iterable(fields.items())))


@dataclass(slots=True)
class Writes:
    records: list[Command] = field(default_factory=list)
    queue: list[Command] = field(default_factory=list)
    scripts: list[ScriptCall] = field(default_factory=list)
    #: (hash key, field) -> increment: merged writes send one HINCRBY per counter.
    #: (A plain dict: a Counter is slow to make, and every job's writes make one.)
    counters: dict[tuple[str, str], int] = field(default_factory=dict)
    #: Jobs that ended "done", the bulk of a busy worker's writes, kept compact: on one
    #: Redis the APPLY script gets their values alone (a dozen arguments a job rather
    #: than some forty); expanded, each is an HSET and an EXPIRE of its record among
    #: the records, and an LREM from its active list among the queue commands.
    done: list[DoneRow] = field(default_factory=list)

    def count(self, key: str, name: str, n: int = 1) -> None:
        """Add ``n`` to counter ``name`` of hash ``key``."""
        counters = self.counters
        counters[key, name] = counters.get((key, name), 0) + n

    def merge(self, other: Writes) -> Writes:
        # (Each list only if it has something: most jobs' writes are one done row.)
        if other.records:
            self.records += other.records
        if other.queue:
            self.queue += other.queue
        if other.scripts:
            self.scripts += other.scripts
        if other.done:
            self.done += other.done
        for (key, name), n in other.counters.items():
            self.count(key, name, n)
        return self

    def record_commands(self) -> list[Command]:
        """The record-phase commands, "done" rows expanded."""
        commands = list(self.records)
        for key, _, ttl, _, result, finished, *start in self.done:
            fields = ["status", "done", "result", result, "finished_at", finished]
            for name, value in zip(start_names(start), start, strict=True):
                fields += (name, value)
            commands += (("HSET", key, tuple(fields)), ("EXPIRE", key, (ttl,)))
        return commands

    def queue_commands(self, done: bool = True) -> list[Command]:
        """The queue-phase commands, counters included (and "done" rows expanded,
        unless ``done`` is False)."""
        counts = [("HINCRBY", key, (name, n)) for (key, name), n in self.counters.items()]
        if not done or not self.done:
            return self.queue + counts
        removals = [("LREM", active, (-1, raw)) for _, active, _, raw, *_ in self.done]
        return self.queue + removals + counts

    def commands(self) -> list[Command]:
        """Every command but the scripts, in the order they must run."""
        return self.record_commands() + self.queue_commands()


@dataclass(frozen=True)
class RoundTrip:
    """What one round trip sends, in order: commands, then script calls."""

    commands: list[Command]
    scripts: list[ScriptCall]


def round_trips(w: Writes, cluster: bool) -> list[RoundTrip]:
    """The round trips that carry out ``w`` in its phase order, as redis-py
    pipelines. One Redis: one pipeline. A cluster: a round trip per phase, each
    script on its own. (On one Redis, the brokers of a real client send the same
    commands straight on a connection: :func:`taskq.broker.raw_commands`.)"""
    if not cluster:
        return [RoundTrip(w.commands(), w.scripts)]
    phases = [RoundTrip(phase, []) for phase in (w.record_commands(), w.queue_commands()) if phase]
    return phases + [RoundTrip([], [call]) for call in w.scripts]


def take_batch(pending: Sequence[Writes | JobDone], limit: int) -> int:
    """How many of ``pending`` (oldest first; writes, or jobs done, which have no
    scripts) can merge into one batch, keeping order: at most ``limit``, and ending at
    the first one with scripts."""
    for n, writes in enumerate(pending[:limit], 1):
        if isinstance(writes, Writes) and writes.scripts:
            return n
    return min(len(pending), limit)


def row_alone(payload: Payload) -> bool:
    """Whether a "done" row (:meth:`WriteBuilder.done`) is all the outcome of this job
    done writes: no unique key to release, no stalls to forget (a first attempt)."""
    return not payload.key and not payload.attempts


def record_fields(payload: Payload, queue: str, status: str = "queued") -> dict[str, Any]:
    return {
        "status": status,
        "task": payload.task,
        "queue": queue,
        "args": dumps(payload.args) if payload.args else "[]",
        "kwargs": dumps(payload.kwargs) if payload.kwargs else "{}",
        "enqueued_at": payload.enqueued_at,
        "attempts": payload.attempts,
        **({"key": payload.key} if payload.key else {}),
    }


def start_values(
    payload: Payload, queue: str, worker: str, started_at: float | str
) -> tuple[Any, ...]:
    """The values a job's start stores, of the last that many START_FIELDS: what a
    run adds if the job's record was stored as it was pushed (``payload.recorded``),
    else all of them. ``started_at`` goes as it is given (a "done" row's is text)."""
    if payload.recorded:
        return (payload.attempts + 1, worker, started_at)
    return (
        payload.task,
        queue,
        dumps(payload.args) if payload.args else "[]",
        dumps(payload.kwargs) if payload.kwargs else "{}",
        payload.enqueued_at,
        payload.attempts + 1,
        worker,
        started_at,
    )


def stamp(t: float) -> str:
    """``t`` seconds as a "done" row carries and stores its times: in whole
    microseconds, e.g. "1700000000.250000"."""
    return f"{t:.6f}"


def start_names(values: Sequence[Any]) -> tuple[str, ...]:
    """The fields of ``values`` (from :func:`start_values`): the last that many of
    START_FIELDS, as scripts.APPLY names them too."""
    return START_FIELDS[len(START_FIELDS) - len(values) :]


def started_fields(payload: Payload, queue: str, worker: str, started_at: float) -> dict[str, Any]:
    """The record's fields as a job starts: the whole record for a job pushed with a
    raw LPUSH (it has none before this), else what the start adds to it."""
    values = start_values(payload, queue, worker, started_at)
    fields = {"status": "active", **dict(zip(start_names(values), values, strict=True))}
    if payload.key and not payload.recorded:
        fields["key"] = payload.key
    return fields


def dead_entry(
    queue: str,
    raw: bytes,
    reason: str,
    *,
    job_id: str | None = None,
    task: str | None = None,
    error: str | None = None,
    traceback: str | None = None,
    attempts: int = 0,
) -> dict[str, Any]:
    """A dead letter: everything needed to understand and retry the job."""
    entry: dict[str, Any] = {
        "id": job_id or new_id(),
        "queue": queue,
        "task": task,
        "reason": reason,
        "error": error,
        "traceback": traceback,
        "attempts": attempts,
        "died_at": time.time(),
    }
    try:
        entry["payload"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        entry["payload_base64"] = base64.b64encode(raw).decode()
    return entry


def entry_payload(entry: dict[str, Any]) -> bytes:
    """The raw job a dead letter holds."""
    if "payload" in entry:
        return str(entry["payload"]).encode()
    return base64.b64decode(entry["payload_base64"])


@dataclass(frozen=True)
class Outcome:
    """How one run of a job ended."""

    status: str  # "done", "failed" (for good: dead-lettered), "scheduled" (a retry), "aborted"
    result: str | None = None  # JSON of the return value
    error: str | None = None  # "ExcType: message"
    traceback: str | None = None
    due: float | None = None  # when a retry runs
    retry_raw: bytes | None = None  # the retry's job, if already encoded


#: A producer adds a queue to the set of queue names (what ``taskq info`` and the
#: dashboard list) with its first push there, then with a push at most once per this
#: many seconds: a command less for every other push. Nothing removes a name from the
#: set, and every worker adds its queues at each heartbeat; this only puts a name
#: back within a minute if the set was deleted by hand.
REGISTER_EVERY = 60.0
#: How long a push's mark (``taskq:{Q}:pushed:P``, a Redis Cluster's pushes only) lasts,
#: seconds: longer than a client goes on sending a command again after a lost reply.
#: redis-py 8's cluster client makes ten more tries, backing off up to a second each:
#: two minutes cover them unless each try hangs for over ten seconds (set
#: ``socket_timeout`` in the URL to bound them). A later try would queue the jobs
#: again. A mark costs Redis about 150 bytes for that long, a push (not a job).
PUSH_MARK_TTL = 120


class WriteBuilder:
    """Builds the :class:`Writes` of each change, given the key space and settings."""

    def __init__(
        self, keys: Keys, result_ttl: int = 86_400, dead_retention: int = 7 * 86_400
    ) -> None:
        self.keys = keys
        self.result_ttl = result_ttl
        self.dead_retention = dead_retention
        # (queue, worker) -> (active list, stats hash): made once, not for every job.
        self._done_keys: dict[tuple[str, str], tuple[str, str]] = {}
        self._job_key_prefix = keys.job("")  # a job's key is this and its id
        self._registered: dict[str, float] = {}  # queue -> when to add its name again

    def push(
        self,
        queue: str,
        jobs: Sequence[tuple[Payload, bytes]],
        due: float | None = None,
        once: bool = False,
    ) -> Writes:
        """Jobs onto ``queue``, or into its delayed set until ``due`` (epoch seconds).
        ``once`` (a Redis Cluster's client): queued by a script that does it once
        however often it is sent (scripts.PUSH_ONCE), not by a bare LPUSH."""
        w = Writes()
        k = self.keys
        for payload, _ in jobs:
            fields = record_fields(payload, queue, "queued" if due is None else "scheduled")
            if due is not None:
                fields["due_at"] = repr(due)
            w.records.append(hset(k.job(payload.id), fields))
        raws = tuple(raw for _, raw in jobs)
        if once and due is None:
            mark = k.pushed(queue, new_id())
            w.scripts.append((scripts.PUSH_ONCE, [k.queue(queue), mark], [PUSH_MARK_TTL, *raws]))
        elif due is None:
            w.queue.append(("LPUSH", k.queue(queue), raws))
        else:
            w.queue.append(("ZADD", k.delayed(queue), tuple(x for r in raws for x in (due, r))))
        now = time.monotonic()
        if now >= self._registered.get(queue, 0.0):
            self._registered[queue] = now + REGISTER_EVERY
            w.scripts.append((scripts.REGISTER, [k.queues()], [queue]))
        return w

    def register_again(self, queue: str) -> None:
        """Name ``queue`` again with its next push: the push that named it may not have
        been applied (its connection dropped)."""
        self._registered.pop(queue, None)

    def push_one(self, queue: str, payload: Payload, raw: bytes) -> list[tuple[Any, ...]] | None:
        """One job onto ``queue`` now, as the commands of one transaction (its record,
        then the job), built straight from the payload; None if this push must also
        name the queue (see :meth:`push`), which the general way does. A transaction,
        not a script: pushed one at a time, a script call took ~10 % longer end to
        end, its four replies read and all."""
        if time.monotonic() >= self._registered.get(queue, 0.0):
            return None
        k = self.keys
        fields = record_fields(payload, queue)
        return [
            ("MULTI",),
            ("HSET", k.job(payload.id), *itertools.chain.from_iterable(fields.items())),
            ("LPUSH", k.queue(queue), raw),
            ("EXEC",),
        ]

    def start(self, queue: str, worker: str, payload: Payload, started_at: float) -> Writes:
        return Writes(
            records=[
                hset(self.keys.job(payload.id), started_fields(payload, queue, worker, started_at))
            ]
        )

    def finish(
        self,
        queue: str,
        worker: str,
        raw: bytes,
        payload: Payload,
        outcome: Outcome,
        started_at: float | None = None,
        ended_at: float | None = None,
    ) -> Writes:
        """Store the outcome, then release the job from the active list: to nowhere
        (done), to the delayed set (a retry) or to the dead letters (failed).

        ``started_at`` is given when the start was never stored on its own (a job
        that ended quickly): the outcome then carries the start's fields too.
        ``ended_at``: when the job ended, if not now."""
        finished_at = time.time() if ended_at is None else ended_at
        if outcome.status == "done" and not payload.key:  # the bulk: a compact row
            row, stats = self.done(
                queue, worker, raw, payload, outcome.result, started_at, finished_at
            )
            w = Writes(done=[row], counters={(stats, "done"): 1})
            return self._unstall(w, queue, payload)
        k = self.keys
        key = k.job(payload.id)
        fields = {} if started_at is None else started_fields(payload, queue, worker, started_at)
        fields["status"] = outcome.status
        # An error's text may hold a lone surrogate (from the job's data), which
        # UTF-8 cannot carry: escaped, or the whole batch of writes would fail.
        error = None if outcome.error is None else utf8_safe(outcome.error)
        tb = None if outcome.traceback is None else utf8_safe(outcome.traceback)
        for name, value in (("result", outcome.result), ("error", error), ("traceback", tb)):
            if value is not None:
                fields[name] = value
        w = Writes()
        if outcome.status == "scheduled":
            assert outcome.due is not None
            fields["due_at"] = repr(outcome.due)
            w.records.append(hset(key, fields))
            w.count(k.stats(queue), "retried")
            retry = outcome.retry_raw or payload.next_attempt().encode()
            w.scripts.append(
                (
                    scripts.RETRY_LATER,
                    [k.active(queue, worker), k.delayed(queue)],
                    [raw, repr(outcome.due), retry],
                )
            )
            return w
        fields["finished_at"] = finished_at
        w.records.append(hset(key, fields))
        w.records.append(("EXPIRE", key, (self.result_ttl,)))
        w.count(k.stats(queue), outcome.status)
        if payload.key:
            w.scripts.append(self.release_key(queue, payload))
        if outcome.status in ("aborted", "failed"):  # a request left would abort a retry
            w.queue.append(("HDEL", k.aborts(queue), (payload.id,)))
        if outcome.status == "failed":
            entry = dead_entry(
                queue,
                raw,
                "failed",
                job_id=payload.id,
                task=payload.task,
                error=error,
                traceback=tb,
                attempts=payload.attempts + 1,
            )
            return w.merge(self.bury(worker, raw, entry))
        # From the tail: jobs enter the active list at its head, so the one ending
        # is among the oldest, and the jobs taken ahead wait in front of it. (So do
        # "done" rows: see Writes.queue_commands and scripts.APPLY.)
        w.queue.append(("LREM", k.active(queue, worker), (-1, raw)))
        return self._unstall(w, queue, payload)

    def done(
        self,
        queue: str,
        worker: str,
        raw: bytes,
        payload: Payload,
        result: str | None,
        started_at: float | None,
        finished_at: float,
    ) -> JobDone:
        """A job done as its "done" row, and the stats hash that counts it: all that
        :meth:`finish` writes for it when :func:`row_alone` says so. A worker hands
        these to its batcher without a :class:`Writes` a job (making and merging one
        cost ~2 us)."""
        keys = self._done_keys.get((queue, worker))
        if keys is None:
            k = self.keys
            keys = self._done_keys[queue, worker] = (k.active(queue, worker), k.stats(queue))
        row: DoneRow = (
            self._job_key_prefix + payload.id,
            keys[0],
            self.result_ttl,
            raw,
            result,
            stamp(finished_at),
        )
        if started_at is not None:
            row += start_values(payload, queue, worker, stamp(started_at))
        return row, keys[1]

    def _unstall(self, w: Writes, queue: str, payload: Payload) -> Writes:
        """Forget the stalls of a job that ended; only a job run before can have any."""
        if payload.attempts:
            w.queue.append(("HDEL", self.keys.stalls(queue), (payload.id,)))
        return w

    def release_key(self, queue: str, payload: Payload) -> tuple[str, list[str], list[Any]]:
        assert payload.key is not None
        return self.release(queue, payload.key, payload.id)

    def release(self, queue: str, key: str, job_id: str) -> tuple[str, list[str], list[Any]]:
        return (scripts.RELEASE_KEY, [self.keys.unique(queue, key)], [job_id])

    def aborted(self, queue: str, job_id: str, key: str | None) -> Writes:
        """The record of a job aborted before a worker took it."""
        fields = {
            "status": "aborted",
            "error": "Aborted before it ran",
            "finished_at": repr(time.time()),
        }
        w = Writes(
            records=[
                hset(self.keys.job(job_id), fields),
                ("EXPIRE", self.keys.job(job_id), (self.result_ttl,)),
            ]
        )
        w.count(self.keys.stats(queue), "aborted")
        if key:
            w.scripts.append(self.release(queue, key, job_id))
        return w

    def bury(self, worker: str, raw: bytes, entry: dict[str, Any]) -> Writes:
        """Move a job from a worker's active list to the dead letters."""
        q = entry["queue"]
        k = self.keys
        now = entry["died_at"]
        return Writes(
            scripts=[
                (
                    scripts.BURY,
                    [k.active(q, worker), k.dead(q), k.dead_data(q), k.stats(q), k.stalls(q)],
                    [raw, entry["id"], dumps(entry), repr(now), repr(now - self.dead_retention)],
                )
            ]
        )

    def give_back(self, queue: str, worker: str, raws: Sequence[bytes]) -> Writes:
        """Return jobs taken ahead but not started (newest first) to the front of
        their queue, for other workers."""
        k = self.keys
        return Writes(
            scripts=[(scripts.GIVE_BACK, [k.active(queue, worker), k.queue(queue)], list(raws))]
        )

    def give_id(self, queue: str, worker: str, raw: bytes, new_raw: bytes) -> Writes:
        """Store a job pushed without an id under the id the worker gave it: the new
        form replaces the old in one step and in its place, not at the head, where
        only fetches push (see FETCH_MANY)."""
        return Writes(
            scripts=[(scripts.GIVE_ID, [self.keys.active(queue, worker)], [raw, new_raw])]
        )
