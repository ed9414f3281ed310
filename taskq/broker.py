"""Every command taskq sends to Redis, as domain verbs.

:class:`Broker` is synchronous (producers, the master thread, the heartbeat thread,
the CLI); :class:`taskq.abroker.AsyncBroker` is its asyncio twin for the event loop.
Reads both need are queued into a pipeline by the ``queue_*`` functions here, and
changes are built once as :class:`taskq.writes.Writes` (which also explains the
order that keeps a cut-short write safe). Keys come from :mod:`taskq.keys`, scripts
from :mod:`taskq.scripts`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import itertools
import json
import logging
import math
import os
import secrets
import selectors
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import redis
import redis.asyncio as aioredis

try:
    from hiredis import pack_command
except ImportError:  # redis-py without its hiredis extra
    pack_command = None  # type: ignore[assignment]
try:  # redis-py's hiredis parser, whose reader read_replies reads straight
    from redis._parsers.hiredis import NOT_ENOUGH_DATA, _HiredisParser
except ImportError:  # another redis-py: its own read_response, reply by reply
    _HiredisParser = None  # type: ignore[assignment,misc]
    NOT_ENOUGH_DATA = object()

from . import scripts
from .connection import SentinelRedis
from .keys import Keys
from .payload import BadPayload, Payload, decode, dumps, peek_id
from .writes import WriteBuilder, Writes, entry_payload, record_fields, round_trips

#: Jobs pushed in one batch (a bulk push streams its batches).
PUSH_BATCH = 2000
#: Lua's unpack() gives a few thousand values at most: bigger commands go in MULTI.
_LUA_MAX_ARGS = 7000
#: Jobs a master moves from the delayed set to the queue in one step.
PROMOTE_BATCH = 1000
#: How long the note of a worker's last fetch is kept (milliseconds): it only serves a
#: fetch sent again after a lost reply, and is deleted with the worker's active list.
FETCHED_MS = 86_400_000

log = logging.getLogger(__name__)

T = TypeVar("T")

#: This process's id, kept up to date by a fork hook: ``os.getpid()`` is a system
#: call, and every push would make one to see whether its connection came from a parent.
_pid = os.getpid()


def _forked() -> None:
    global _pid  # noqa: PLW0603  (one value for the whole process)
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def is_cluster(client: Any) -> bool:
    return isinstance(client, redis.RedisCluster | aioredis.RedisCluster)


def queue_status(pipe: Any, keys: Keys, job_ids: Iterable[str]) -> None:
    for job_id in job_ids:
        pipe.hget(keys.job(job_id), "status")


def queue_records(pipe: Any, keys: Keys, job_ids: Iterable[str]) -> None:
    for job_id in job_ids:
        pipe.hgetall(keys.job(job_id))


def stall_key(raw: bytes) -> str:
    """The id stalls are counted under: the job id, or a digest of an unreadable job."""
    return peek_id(raw) or "raw-" + hashlib.sha1(raw).hexdigest()


def raw_commands(w: Writes, anew: bool = False) -> list[tuple[Any, ...]]:
    """``w`` as the commands the brokers send straight on one connection to one
    Redis, in its phase order, all or nothing: a command Redis refuses (out of
    memory, say) must not leave a job out of its active list with its outcome
    unstored. Jobs done (the worker's batches) go with the commands around them as
    one APPLY script call: three commands a job in one reply, read on the loop
    thread. Other writes of several commands (a push, say) go as one transaction,
    which Redis runs in about half a script call's time; so do writes with scripts of
    their own, or with too many arguments for Lua. A single command goes alone.
    Scripts go as EVAL: an EVALSHA refused with NOSCRIPT would abort the
    transaction.

    ``anew`` (a worker's writes, not a push): a hash of ``w``'s overwritten by hand
    with something else is written anew (see scripts._HSET); such writes go as APPLY,
    or their HSETs as HSET_ANEW, never as a bare HSET."""
    if not w.scripts:
        # "done" rows go to APPLY as their values alone (see Writes.done).
        commands = w.records + w.queue_commands(done=False)
        if len(commands) == 1 and not w.done:
            return [raw_command(*commands[0], anew=anew)]
        if (w.done or anew) and all(len(args) < _LUA_MAX_ARGS for _, _, args in commands):
            keys: dict[str, int] = {}
            argv: list[Any] = []
            for name, key, args in commands:
                argv += (name, keys.setdefault(key, len(keys) + 1), len(args), *args)
            size = len(argv)
            argv.append(0)  # where the jobs' records begin in KEYS: set below
            records = []
            run: tuple[Any, ...] = ()
            rows = 0  # where the current run's count of rows is in argv
            for row in w.done:  # (job, active, ttl, raw, result, finished_at, *start)
                width = len(row)
                head = (row[1], row[2], width, row[-2] if width > 6 else "")
                if head != run:  # rows that share these go as one run (see APPLY)
                    run = head
                    argv += (keys.setdefault(row[1], len(keys) + 1), row[2], width - 6, head[3], 0)
                    rows = len(argv) - 1
                argv[rows] += 1
                if width > 6:  # the start values but the worker, who is the run's
                    argv += (*row[3:-2], row[-1])
                else:
                    argv += row[3:]
                records.append(row[0])
            argv[size] = len(keys) + 1
            return [("EVAL", scripts.APPLY, len(keys) + len(records), *keys, *records, size, *argv)]
    commands = w.commands()
    return [
        ("MULTI",),
        *(raw_command(*command, anew=anew) for command in commands),
        *(("EVAL", source, len(keys), *keys, *argv) for source, keys, argv in w.scripts),
        ("EXEC",),
    ]


def raw_command(name: str, key: str, args: tuple[Any, ...], anew: bool = False) -> tuple[Any, ...]:
    """A command as sent; a count as scripts.COUNT, which starts again a count that
    was overwritten by hand rather than fail (see scripts._COUNT); with ``anew``, an
    HSET as scripts.HSET_ANEW (see :func:`raw_commands`)."""
    if name == "HINCRBY":
        return ("EVAL", scripts.COUNT, 1, key, *args)
    if name == "HSET" and anew:
        return ("EVAL", scripts.HSET_ANEW, 1, key, *args)
    return (name, key, *args)


def pack(conn: Any, commands: list[tuple[Any, ...]]) -> list[bytes]:
    """The commands in Redis's protocol: hiredis's packer straight (what redis-py
    calls per command, behind checks costing three times the packing; its asyncio
    client packs in Python), else redis-py's."""
    if pack_command is None:
        return list(conn.pack_commands(commands))
    return [b"".join([pack_command(command) for command in commands])]


def wrong_type(found: Any, kind: str) -> bool:
    """Whether a key of type ``found`` (TYPE's reply) refuses what a ``kind`` takes.
    A push to such a key wrote its jobs' records (a transaction runs on past a
    refused command) but queued nothing: those records are taken back."""
    return (text(found) or "none") not in ("none", kind)


def pushed_as(enqueued_at: Any, payload: Payload) -> bool:
    """Whether a job record's ``enqueued_at`` (as read: bytes, or None if there is no
    record) is the one a push of ``payload`` stored: it was stored by that push, as
    a push is one transaction (a job pushed again under its id has another time)."""
    try:
        return enqueued_at is not None and float(enqueued_at) == payload.enqueued_at
    except ValueError:  # overwritten by hand: sent again rather than maybe lost
        return False


#: A connection as Redis knows it: its id, and its peer's address as Redis sees it
#: (a client's or a proxy's). Ids start again from 1 when Redis restarts, and each
#: server of a failover counts its own: with the address too, a connection closed to
#: fence a lost push is never another client's.
Client = tuple[int, str]


class Landed:
    """Asks whether a push (one transaction) whose connection was lost landed.

    A lost connection is not always a lost push: Redis may have applied it and its
    reply died on the way back, or (a timeout) it may still be on its way, held up
    in a buffer or a proxy. So the connections it went out on are closed first, with
    ``CLIENT KILL`` (as Redis knows them, in ``lost``, filled in by the broker as it
    loses them): what has not reached Redis then never will, and a transaction that
    has only partly reached it is discarded. The first job's record then tells, in
    the same round trip: the push landed whole or not at all, and if not it can be
    sent again without queueing its jobs twice. A user that may not run
    ``CLIENT KILL`` gets the record's answer alone, which a push still on its way
    could still prove wrong.

    The push target's type is read too: a push refused for it (WRONGTYPE) wrote its
    records but queued nothing, and is reported as refused (the push then takes the
    records back), not as landed."""

    __slots__ = ("due", "keys", "lost", "payload", "queue")

    def __init__(
        self,
        keys: Keys,
        queue: str,
        due: float | None,
        payload: Payload,
        lost: list[Client] | None = None,
    ) -> None:
        # Made for every push, asked only for one whose connection was lost: kept light.
        self.keys, self.queue, self.due, self.payload = keys, queue, due, payload
        self.lost = [] if lost is None else lost

    def commands(self) -> list[tuple[Any, ...]]:
        kills = [("CLIENT", "KILL", "ID", id_, "ADDR", addr) for id_, addr in self.lost]
        target = self.keys.push_target(self.queue, self.due)[0]
        return [*kills, ("TYPE", target), ("HGET", self.keys.job(self.payload.id), "enqueued_at")]

    def answer(self, replies: list[Any]) -> bool:
        """From the replies to :meth:`commands` (errors returned, not raised)."""
        del self.lost[:]  # closed, or Redis refuses to: asking again changes nothing
        found, enqueued_at = replies[-2:]
        for reply in (found, enqueued_at):
            if isinstance(reply, redis.ResponseError):
                raise reply
        if wrong_type(found, self.keys.push_target(self.queue, self.due)[1]):
            raise redis.ResponseError(
                "WRONGTYPE Operation against a key holding the wrong kind of value"
            )
        return pushed_as(enqueued_at, self.payload)


def client_described(reply: Any) -> Client | None:
    """The :data:`Client` a ``CLIENT INFO`` reply describes; None for an error (an
    ACL that refuses it, say), a reply without an id and an address, or a connection
    over a Unix socket: every client of the socket has its address (``path:0``), so
    after a restart an id would tell another client's connection from none, and
    closing it is worse than what it fences off."""
    if not isinstance(reply, (bytes, str)):
        return None
    text_ = reply.decode() if isinstance(reply, bytes) else reply
    fields = dict(f.partition("=")[::2] for f in text_.split())
    try:
        client = int(fields["id"]), fields["addr"]
    except (KeyError, ValueError):
        return None
    return None if client[1].endswith(":0") else client


def refused_for_now(reply: Any) -> bool:
    """Whether ``reply`` is an error that refuses a command only for now (BUSY while a
    script runs long; a cluster failing over), not for as long as the connection lives
    (an ACL's NOPERM, a Redis or a proxy without the command)."""
    if not isinstance(reply, redis.ResponseError):
        return False
    if isinstance(reply, (redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError)):
        return True
    return str(reply).startswith(("BUSY ", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN"))


def client_of(conn: Any, token: Any) -> Client | None:
    """``conn``'s present connection as Redis knows it (``token`` is its socket),
    asked once a connection; None where Redis will not say (asked again next time
    where it only will not say for now). See :class:`Landed`."""
    known = getattr(conn, "_taskq_client", None)
    if known is not None and known[0] is token:
        cached: Client | None = known[1]
        return cached
    conn.send_packed_command(pack(conn, [("CLIENT", "INFO")]), check_health=False)
    reply = read_replies(conn, 1)[0]
    found = client_described(reply)
    if not refused_for_now(reply):
        conn._taskq_client = (token, found)
    return found


def landed(conn: Any, check: Landed) -> bool:
    """``check`` asked on the connected ``conn``."""
    commands = check.commands()
    conn.send_packed_command(pack(conn, commands), check_health=False)
    return check.answer(read_replies(conn, len(commands)))


def _landed_after_all(conn: Any, check: Landed) -> bool | None:
    """``check`` asked on ``conn`` made anew; None if Redis cannot be asked."""
    conn.disconnect()
    try:
        ensure_connected(conn)
        return landed(conn, check)
    except (redis.ConnectionError, redis.TimeoutError):
        return None


def read_replies(conn: Any, count: int) -> list[Any]:
    """The next ``count`` replies on ``conn``; an error reply is returned, not raised.
    Straight from the hiredis reader of redis-py's parser where it is one (with
    nothing read ahead): redis-py's two wrappers around each reply cost a push of one
    job (four replies) ~10 % of its CPU. A push frame (RESP3) goes to the parser's
    handler, as redis-py does. A lost connection raises as redis-py's own read does
    (ConnectionError, TimeoutError); the caller disconnects."""
    parser = conn._parser
    if (
        type(parser) is not _HiredisParser
        or getattr(parser, "_next_response", NOT_ENOUGH_DATA) is not NOT_ENOUGH_DATA
    ):
        return [_read_reply(conn) for _ in range(count)]
    reader, fill = parser._reader, conn._parser.read_from_socket
    if reader is None:
        raise redis.ConnectionError("Connection closed by server.")
    push_frame = getattr(parser, "_hiredis_PushNotificationType", None) or ()
    replies: list[Any] = []
    try:
        while len(replies) < count:
            reply = reader.gets()
            while reply is NOT_ENOUGH_DATA:
                fill()
                reply = reader.gets()
            if isinstance(reply, push_frame):
                conn._parser.handle_push_response(reply)
            elif isinstance(reply, redis.ConnectionError):
                raise reply  # as redis-py raises it (a refused AUTH, say)
            else:
                replies.append(reply)
    except OSError as exc:
        raise redis.ConnectionError(f"Error while reading from Redis: {exc}") from exc
    if conn.health_check_interval:
        conn.next_health_check = time.monotonic() + conn.health_check_interval
    return replies


def _read_reply(conn: Any) -> Any:
    try:
        return conn.read_response()
    except redis.ResponseError as exc:
        return exc


def reply_errors(reply: Any) -> list[Exception]:
    """The errors in a reply read without raising: those of EXEC's commands."""
    return [x for x in reply if isinstance(x, Exception)] if isinstance(reply, list) else []


def own_connection(pool: Any) -> Any:
    """A connection of the pool's kind made outside it: a broker's own, so that it
    does not take one of the pool's ``max_connections``."""
    return pool.connection_class(**pool.connection_kwargs)


def ensure_connected(conn: Any) -> None:
    """Connect ``conn`` with its own ``connect()`` if it is not connected. Sending
    would connect it too, but (redis-py 8) past that method, to the address it last
    had: a Sentinel's connection must ask where the master is now."""
    if conn._sock is None:
        conn.connect()


def closed_while_idle(conn: Any) -> bool:
    """Whether an idle sync connection must be remade before use, as redis-py's pool
    checks it: readable while idle means Redis closed it (a restart, CLIENT KILL, a
    timeout) or replies were left unread."""
    if not getattr(conn, "is_connected", True):
        return False  # sending connects it
    try:
        return bool(conn.can_read())
    except (redis.RedisError, OSError):
        return True


class Broker:
    """Synchronous verbs. Thread-safe: each command borrows a pooled connection."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys | None = None,
        dead_retention: int = 7 * 86_400,
        result_ttl: int = 86_400,
    ) -> None:
        # redis-py's annotations assume str replies and int timeouts; taskq reads bytes
        # and blocks for fractions of a second, so the client is typed loosely here.
        self.client: Any = client
        self.keys = keys or Keys()
        self.dead_retention = dead_retention
        self.cluster = is_cluster(client)
        # A plain client on one Redis: writes and the master's fetches go straight to
        # a connection (see _send_and_read, _call); a cluster's, or fakeredis's, go
        # through redis-py.
        self._raw = type(client) in (redis.Redis, SentinelRedis)
        self._own: Any = None
        self._own_lock = threading.Lock()
        self._waiters: dict[str, Any] = {}  # queue -> its connection (fetch_blocking_any)
        self._unblock_refused = False
        self._unlisted = False  # warned that the set of queue names is not a set
        # Fetches are numbered, under a name of this broker's own (see FETCH_MANY).
        self._fetcher = secrets.token_hex(4)
        self._fetches = 0
        self._unsettled: dict[str, int] = {}  # queue -> number of a fetch not answered
        #: Queues whose blocking wait failed on a lost connection: it may have moved a
        #: job whose reply never came. The master puts back the worker's active list of
        #: each once it holds no job (see Worker._put_back_lost), and empties this.
        self.lost_waits: set[str] = set()
        self.writes = WriteBuilder(self.keys, result_ttl, dead_retention)
        self._scripts: dict[str, Any] = {}
        self._fetch_many = self._script(scripts.FETCH_MANY)
        self._put_back = self._script(scripts.PUT_BACK)
        self._promote = self._script(scripts.PROMOTE)
        self._recover_one = self._script(scripts.RECOVER_ONE)
        self._forget_worker = self._script(scripts.FORGET_WORKER)
        self._revive = self._script(scripts.REVIVE)

    def _script(self, source: str) -> Any:
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self.client.register_script(source)
        return script

    def apply(self, w: Writes) -> None:
        """Carry out ``w`` in its phase order (see :func:`taskq.writes.round_trips`)."""
        if not self._raw:
            for trip in round_trips(w, self.cluster):
                if not trip.commands and len(trip.scripts) == 1:
                    source, keys, args = trip.scripts[0]
                    self._script(source)(keys=keys, args=args)
                    continue
                pipe = self.client.pipeline(transaction=False)
                for name, key, command_args in trip.commands:
                    pipe.execute_command(*raw_command(name, key, command_args, anew=True))
                for source, keys, args in trip.scripts:
                    self._script(source)(keys=keys, args=args, client=pipe)
                pipe.execute()
            return
        self._write([w], retry=True, anew=True)

    def _apply_streamed(self, batches: Iterable[Writes], lost: list[Client] | None = None) -> None:
        """Apply ``batches`` in order on one connection, each sent as soon as it is
        built and the replies read at the end: Redis applies one batch while the
        next is built. Not retried: batches sent before a lost connection may have
        been applied (see :meth:`_push_again`); that connection goes to ``lost``."""
        if not self._raw:
            for w in batches:
                self.apply(w)
            return
        self._write(batches, retry=False, lost=lost)

    def _write(
        self,
        batches: Iterable[Writes],
        retry: bool,
        check: Landed | None = None,
        maybe_sent: bool = False,
        lost: list[Client] | None = None,
        anew: bool = False,
    ) -> None:
        commands = (raw_commands(w, anew) for w in batches)
        if retry:
            sent = list(commands)  # sent again whole on a lost connection
            self._straight(
                lambda conn: self._send_and_read(conn, sent), check=check, maybe_sent=maybe_sent
            )
        else:
            self._straight(lambda conn: self._send_and_read(conn, commands), False, lost=lost)

    def _borrow(self, polled: bool = True) -> tuple[Any, bool]:
        """A connection for the raw path, and whether it is the broker's own: kept
        for whichever thread finds it free (borrowing from redis-py's pool costs
        about as much CPU as Redis spends on a push); other threads use the pool.
        ``polled``: see :meth:`_usable`."""
        if not self._own_lock.acquire(blocking=False):
            return self._pool_connection(), False
        try:
            conn = self._own = self._usable(self._own, polled)
        except BaseException:
            self._own_lock.release()
            raise
        return conn, True

    def _usable(self, conn: Any, polled: bool = True) -> Any:
        """``conn`` (one of the broker's own), ready for use: made anew if there is
        none yet or it was made before a fork, disconnected if Redis closed it while
        idle (it is connected again before use), which a poll tells unless not
        ``polled`` (see :meth:`_straight`)."""
        if conn is None or conn.pid != _pid:
            return own_connection(self.client.connection_pool)
        if polled and closed_while_idle(conn):
            conn.disconnect()
        return conn

    def _give_back(self, conn: Any, own: bool) -> None:
        if own:
            self._own_lock.release()
        else:
            self.client.connection_pool.release(conn)

    def _pool_connection(self) -> Any:
        pool = self.client.connection_pool
        try:
            return pool.get_connection()
        except TypeError:  # redis-py 5 wants a command name
            return pool.get_connection("EVAL")

    def close(self) -> None:
        """Close the client's connections and the broker's own ones."""
        own = self._own
        if own is not None:
            own.disconnect()
        for conn in self._waiters.values():
            conn.disconnect()
        self.client.close()

    def _call(self, command: tuple[Any, ...]) -> Any:
        """Send one command straight on a connection (the raw path) and return its
        reply. Half the CPU of redis-py's call: the master's fetches cost ~65 us less
        each."""

        def once(conn: Any) -> Any:
            conn.send_packed_command(pack(conn, [command]), check_health=False)
            reply = read_replies(conn, 1)[0]
            if isinstance(reply, redis.ResponseError):
                raise reply
            return reply

        return self._straight(once)

    def _transact(self, commands: list[tuple[Any, ...]], check: Landed | None = None) -> None:
        """Send ``commands`` (a transaction) straight on a connection in one write and
        read every reply; raise the first error among them, once all are read."""
        self._straight(lambda conn: self._send_and_read(conn, [commands]), check=check)

    def _straight(
        self,
        once: Callable[[Any], Any],
        retry: bool = True,
        check: Landed | None = None,
        maybe_sent: bool = False,
        lost: list[Client] | None = None,
    ) -> Any:
        """``once(conn)`` on a connection of the raw path, retried (unless not
        ``retry``) on a lost connection as redis-py retries its own commands (by
        default, with a client made from a URL, not at all).

        ``check``, if given, tells whether Redis applied an attempt whose connection
        was lost after sending (see :class:`Landed`): such an attempt is not sent
        again (a push would queue its job twice), and if it was the last one, the
        call returns instead of raising the lost connection. ``maybe_sent``: it may
        have been applied before this call (sent on a connection since lost), so
        ``check`` is asked before the first attempt too. Connections lost after
        sending go to ``lost`` (``check.lost`` if there is a check).

        With a ``check`` (a push), the broker's own connection is not polled before
        use to see whether Redis closed it while idle (a system call, ~5 % of a push
        sent one at a time): if it was, the push fails on it, is found not to have
        landed, and is sent once more on a new connection, retries or not."""
        conn, own = self._borrow(polled=check is None)
        reused = check is not None and own and conn._sock is not None
        sent = maybe_sent
        if check is not None:
            lost = check.lost
        sent_on: Client | None = None  # the connection of the last attempt

        def connected() -> Any:
            nonlocal sent, sent_on
            ensure_connected(conn)
            if lost is not None:
                sent_on = client_of(conn, conn._sock)
            if sent and check is not None and landed(conn, check):
                return None
            sent = True
            return once(conn)

        def dropped(_error: object = None) -> None:
            nonlocal sent_on
            if sent and sent_on is not None and lost is not None:
                lost.append(sent_on)
            sent_on = None
            conn.disconnect()

        try:
            if not retry:
                return connected()
            while True:
                try:
                    return conn.retry.call_with_retry(connected, dropped)
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    if check is None:
                        raise
                    # The last attempt's connection is fenced too, even where the
                    # client's Retry does not handle this error (and so never
                    # called ``dropped``).
                    dropped()
                    # Not sent (it failed asking Redis's id of the connection, say):
                    # not landed either.
                    found = _landed_after_all(conn, check) if sent else False
                    if found:
                        return None
                    if not reused or found is None or isinstance(exc, redis.TimeoutError):
                        raise
                    reused = sent = False  # not landed (and fenced): once more, anew
        except redis.ResponseError:
            raise  # every reply was read: the connection is as good as before
        except BaseException:
            dropped()  # a reply may be left unread: never reuse it as it is
            raise
        finally:
            self._give_back(conn, own)

    @staticmethod
    def _send_and_read(conn: Any, batches: Iterable[list[tuple[Any, ...]]]) -> None:
        """Send each batch of commands in one write, then read the replies of the
        batch before: Redis applies a batch while the next is built, and holds the
        replies of two at most. A command that fails does not stop those after it;
        the first error is raised, once every reply is read. Straight on a connected
        connection: redis-py's per-command machinery costs more than Redis takes to
        run a push."""
        errors: list[Exception] = []
        unread = 0
        for commands in batches:
            # No health check: its PING would be answered after replies still unread.
            conn.send_packed_command(pack(conn, commands), check_health=False)
            if unread:
                Broker._read_replies(conn, unread, errors)
            unread = len(commands)
        Broker._read_replies(conn, unread, errors)
        if errors:
            raise errors[0]

    @staticmethod
    def _read_replies(conn: Any, count: int, errors: list[Exception]) -> None:
        """Read ``count`` replies, adding the errors among them to ``errors``."""
        for reply in read_replies(conn, count):
            if isinstance(reply, redis.ResponseError):
                errors.append(reply)
            else:
                errors += reply_errors(reply)

    # -- producers -------------------------------------------------------------------
    def push(
        self, queue: str, jobs: Sequence[tuple[Payload, bytes]], due: float | None = None
    ) -> None:
        lost: list[Client] = []  # see Landed
        try:
            if len(jobs) == 1 and due is None and self._raw:  # the usual push
                commands = self.writes.push_one(queue, *jobs[0])
                if commands is not None:
                    self._transact(commands, Landed(self.keys, queue, None, jobs[0][0]))
                    return
            if len(jobs) <= PUSH_BATCH:
                w = self.writes.push(queue, jobs, due, once=self.cluster)
                if self._raw:  # one transaction: the first job's record tells
                    check = Landed(self.keys, queue, due, jobs[0][0], lost)
                    self._write([w], retry=True, check=check)
                else:
                    self.apply(w)
                return
            parts = [jobs[start : start + PUSH_BATCH] for start in range(0, len(jobs), PUSH_BATCH)]
            try:  # in slices, each sent as soon as it is built
                slices = (self.writes.push(queue, part, due, once=self.cluster) for part in parts)
                self._apply_streamed(slices, lost)
            except (redis.ConnectionError, redis.TimeoutError):
                if not self._raw:
                    raise
                self._push_again(queue, parts, due, lost)
        except (redis.ConnectionError, redis.TimeoutError):
            # Maybe not applied: the push that named the queue may be this one.
            self.writes.register_again(queue)
            raise
        except redis.ResponseError:
            target, kind = self.keys.push_target(queue, due)
            with contextlib.suppress(redis.RedisError):  # the refusal is what to report
                if wrong_type(self.client.type(target), kind):
                    self.client.delete(*(self.keys.job(payload.id) for payload, _ in jobs))
            raise

    def _push_again(
        self,
        queue: str,
        parts: list[Sequence[tuple[Payload, bytes]]],
        due: float | None,
        lost: list[Client],
    ) -> None:
        """A push in slices lost its connection: Redis may have applied any of them.
        Each slice is one transaction, which its first job's record tells: those
        applied are left be, the others sent again, one at a time. Raises if Redis
        cannot be asked."""
        self.writes.register_again(queue)
        for part in parts:
            w = self.writes.push(queue, part, due)
            check = Landed(self.keys, queue, due, part[0][0], lost)
            self._write([w], retry=True, check=check, maybe_sent=True)

    def push_unique(self, queue: str, payload: Payload, raw: bytes, due: float | None) -> str:
        """Push a job with a unique key unless a job holds the key; returns the id of
        the job holding it (this one if pushed). The record is written first, as for
        every push, and taken back if another job won."""
        assert payload.key is not None
        w = self.writes.push(queue, [(payload, raw)], due)
        self.apply(Writes(records=w.records, scripts=w.scripts))
        target = self.keys.queue(queue) if due is None else self.keys.delayed(queue)
        try:
            holder = self._script(scripts.PUSH_UNIQUE)(
                keys=[self.keys.unique(queue, payload.key), target],
                args=[payload.id, raw, "" if due is None else repr(due)],
            )
        except redis.ResponseError:  # refused (the queue's type, say): no job, no record
            self.client.delete(self.keys.job(payload.id))
            raise
        holder = text(holder) or ""
        if holder != payload.id:
            self.client.delete(self.keys.job(payload.id))
        return holder

    def claim_tick(self, name: str, tick: float, worker: str, ttl: float) -> bool:
        """Claim one tick of a cron schedule; only one claimer ever succeeds."""
        return bool(
            self.client.set(self.keys.cron_tick(name, tick), worker, nx=True, ex=max(1, int(ttl)))
        )

    def publish_schedules(self, schedules: dict[str, dict[str, Any]]) -> None:
        if schedules:
            self.client.hset(
                self.keys.cron(), mapping={name: dumps(info) for name, info in schedules.items()}
            )

    def schedules(self) -> list[dict[str, Any]]:
        """The cron schedules workers published; one unreadable (not taskq's) is left
        out: each worker publishes its own again as it starts."""
        found = []
        for name, raw in self.client.hgetall(self.keys.cron()).items():
            try:
                info = json.loads(raw)
            except (ValueError, RecursionError):
                continue
            if isinstance(info, dict):
                found.append({**info, "name": text(name)})
        return sorted(found, key=lambda info: str(info["name"]))

    def abort(self, job_id: str, queue: str, status: str, key: str | None) -> bool:
        """Abort a job (see :meth:`taskq.Job.abort`); False if it had finished."""
        if status in ("done", "failed", "aborted"):
            return False
        removed = self._script(scripts.ABORT)(
            keys=[self.keys.queue(queue), self.keys.delayed(queue), self.keys.aborts(queue)],
            args=[job_id, repr(time.time()), dumps(job_id)[1:-1], json.dumps(job_id)[1:-1]],
        )
        if removed:
            self.apply(self.writes.aborted(queue, job_id, key))
        return True

    def abort_requests(self, queue: str, forget_before: float) -> set[str]:
        """Ids of jobs whose abort waits for a worker; requests older than
        ``forget_before`` (their job finished or vanished meanwhile) are dropped."""
        found = {
            text(k) or "": _number(v, -math.inf)  # unreadable (not taskq's): stale
            for k, v in self.client.hgetall(self.keys.aborts(queue)).items()
        }
        stale = [job_id for job_id, at in found.items() if at < forget_before]
        if stale:
            self.client.hdel(self.keys.aborts(queue), *stale)
        return set(found) - set(stale)

    def statuses(self, job_ids: Sequence[str]) -> list[str | None]:
        pipe = self.client.pipeline(transaction=False)
        queue_status(pipe, self.keys, job_ids)
        return [text(s) for s in pipe.execute()]

    def record(self, job_id: str) -> dict[str, str]:
        return fields_of(self.client.hgetall(self.keys.job(job_id)))

    def records(self, job_ids: Sequence[str]) -> list[dict[str, str]]:
        pipe = self.client.pipeline(transaction=False)
        queue_records(pipe, self.keys, job_ids)
        return [fields_of(r) for r in pipe.execute()]

    # -- the master ------------------------------------------------------------------
    def fetch(self, queue: str, worker: str, n: int) -> list[bytes]:
        """Move up to ``n`` jobs into the worker's active list at once, without waiting.

        A fetch that fails on a lost connection may have moved jobs whose reply never
        came: the queue is then :meth:`unsettled`, and its next fetch is sent again
        under the same number, which returns those jobs instead of moving more (see
        FETCH_MANY). Without that they would lie in the active list, run by no one,
        until the worker stopped."""
        k = self.keys
        number = self._unsettled.get(queue)
        again = number is not None
        if number is None:
            self._fetches += 1
            number = self._fetches
        keys = (k.queue(queue), k.active(queue, worker), k.fetched(queue, worker))
        args = (n, self._fetcher, number, FETCHED_MS, int(again))
        try:
            if self._raw:
                raws = self._call(("EVAL", scripts.FETCH_MANY, 3, *keys, *args))
            else:
                raws = self._fetch_many(keys=keys, args=args)
        except BaseException:
            # It may have run (a cluster's client, say, reports a lost reply as it
            # can): ask again with the same number, which moves nothing if it had not.
            self._unsettled[queue] = number
            raise
        self._unsettled.pop(queue, None)
        return list(raws)

    def unsettled(self) -> list[str]:
        """The queues whose last fetch may have moved jobs that were never seen."""
        return list(self._unsettled)

    def fetch_blocking(self, queue: str, worker: str, timeout: float) -> bytes | None:
        """Wait inside Redis up to ``timeout`` seconds for one job and move it. A wait
        that fails on a lost connection may have moved a job: see :attr:`lost_waits`."""
        try:
            got: bytes | None = self.client.blmove(
                self.keys.queue(queue), self.keys.active(queue, worker), timeout, "RIGHT", "LEFT"
            )
        except redis.ResponseError:
            raise  # refused (WRONGTYPE, say): nothing moved
        except BaseException:
            self.lost_waits.add(queue)  # lost however reported (a cluster's client too)
            raise
        return got

    def fetch_blocking_any(
        self, queues: Sequence[str], worker: str, timeout: float
    ) -> list[tuple[str, bytes]]:
        """Wait inside Redis up to ``timeout`` seconds for a job on any of ``queues``
        and move it; returns the (queue, job) pairs moved, in the order of ``queues``.

        Redis has no blocking move from several lists, so each queue gets a BLMOVE of
        its own, all at once, on connections kept for it (one thread at a time: the
        master's). The first job to arrive ends the wait: the other BLMOVEs are
        unblocked (CLIENT UNBLOCK, answered as if their time had run out, or with a
        job moved just before; sent on the connection that answered, so the ids are
        those of its server) and every reply is read, so a job moved is never left
        unseen in the active list; a connection that fails gives up its own wait
        only. Several jobs may come at once (one a queue).

        On a cluster, or fakeredis, or where CLIENT is refused (an ACL) or renamed
        away, the queues are waited on in turn, each for its share of ``timeout``."""
        queues = list(dict.fromkeys(queues))  # one wait a queue, however often named
        if len(queues) == 1:
            one = self.fetch_blocking(queues[0], worker, timeout)
            return [] if one is None else [(queues[0], one)]
        if not self._raw or self._unblock_refused:
            for queue in queues:
                one = self.fetch_blocking(queue, worker, max(timeout / len(queues), 0.01))
                if one is not None:
                    return [(queue, one)]
            return []
        conns = [self._waiter(queue) for queue in queues]
        waits = _Waits(conns)
        try:
            for conn in conns:  # all before any wait starts: a failure moves no job
                ensure_connected(conn)
            self._wait_any(waits, queues, worker, timeout)
        except BaseException:
            for conn in conns:  # replies may be left unread: never reuse them as they are
                conn.disconnect()
            self.lost_waits.update(queues)
            raise
        finally:
            self.lost_waits.update(queues[n] for n in waits.failed())
        return [(queues[n], raw) for n, raw in waits.moves()]

    def _wait_any(self, waits: _Waits, queues: Sequence[str], worker: str, timeout: float) -> None:
        """fetch_blocking_any's waits, from the BLMOVEs sent to their replies read."""
        for n, queue in enumerate(queues):
            src, dst = self.keys.queue(queue), self.keys.active(queue, worker)
            blmove = ("BLMOVE", src, dst, "RIGHT", "LEFT", timeout)
            waits.send(n, [("CLIENT", "ID"), blmove])
        ids: dict[int, int] = {}
        for n in waits.live():
            try:
                client_id = waits.read(n)
            except redis.ResponseError as exc:
                self._refused(exc)  # that wait runs to its timeout
                continue
            if client_id is not None:
                ids[n] = int(client_id)
        first = waits.first_to_answer(time.monotonic() + timeout + 1.0)
        if first is not None:
            waits.read_move(first)
            # On the connection that answered, for the waits on the same server: the
            # ids are that server's (after a failover, a wait may be on another).
            others = [ids[n] for n in waits.live() if n in ids and waits.same_server(n, first)]
            unblocks = [("CLIENT", "UNBLOCK", client_id, "TIMEOUT") for client_id in others]
            if others and waits.send(first, unblocks):
                for _ in others:
                    try:
                        waits.read(first)
                    except redis.ResponseError as exc:
                        self._refused(exc)  # those waits run to their timeout
        for n in waits.live():
            waits.read_move(n)

    def _waiter(self, queue: str) -> Any:
        """The connection that waits for jobs on ``queue`` (fetch_blocking_any)."""
        conn = self._waiters[queue] = self._usable(self._waiters.get(queue))
        return conn

    def _refused(self, exc: redis.ResponseError) -> None:
        """A CLIENT command was refused. Not allowed (an ACL) or not known (renamed
        away): from now on, wait on several queues in turn. Other errors: only the
        waits concerned run to their timeout."""
        if not isinstance(exc, redis.exceptions.NoPermissionError) and (
            "unknown" not in str(exc).lower()
        ):
            log.warning("could not end a wait on a queue early (%s): it times out", exc)
            return
        if not self._unblock_refused:
            log.warning("waiting on several queues in turn: CLIENT is refused (%s)", exc)
            self._unblock_refused = True

    def promote(self, queue: str, now: float | None = None) -> tuple[int, float | None]:
        """Move due delayed jobs to the queue; returns (moved, when the next one is due)."""
        now = time.time() if now is None else now
        moved, next_due = self._promote(
            keys=[self.keys.delayed(queue), self.keys.queue(queue)], args=[repr(now), PROMOTE_BATCH]
        )
        return int(moved), float(next_due) if next_due else None

    def put_back(self, queue: str, worker: str) -> list[str]:
        """Put every job still in the worker's active list back at the queue's front.

        Returns the ids that could be read; their records go back to ``queued``.
        """
        active = self.keys.active(queue, worker)
        raws = self.client.lrange(active, 0, -1)
        moved = self._put_back(
            keys=[active, self.keys.queue(queue), self.keys.fetched(queue, worker)]
        )
        ids = [i for i in (peek_id(r) for r in raws[:moved]) if i is not None]
        self._note(ids, worker, 0, {"status": "queued", "worker": ""})
        return ids

    def _note(
        self, job_ids: Sequence[str], worker: str, stalls: int, fields: dict[str, str]
    ) -> None:
        """Note jobs of ``worker`` put back on their queue in their records: see
        scripts.NOTE_UNLESS_ENDED."""
        args = [stalls, worker, *(x for pair in fields.items() for x in pair)]
        calls = [(scripts.NOTE_UNLESS_ENDED, [self.keys.job(i)], args) for i in job_ids]
        if calls:
            self.apply(Writes(scripts=calls))

    # -- heartbeat and recovery ------------------------------------------------------
    def heartbeat(
        self, worker: str, queues: Sequence[str], info: dict[str, str], ttl: float
    ) -> None:
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        for q in queues:
            pipe.zadd(self.keys.workers(q), {worker: now})
        pipe.hset(self.keys.worker(worker), mapping=info)
        pipe.pexpire(self.keys.worker(worker), int(ttl * 1000))
        pipe.sadd(self.keys.queues(), *queues)  # last: it alone may be refused
        replies = pipe.execute(raise_on_error=False)
        unlisted = isinstance(replies[-1], redis.ResponseError)  # the one refusal let by
        for error in reply_errors(replies[:-1] if unlisted else replies):
            raise error
        if unlisted and not self._unlisted:
            self._unlisted = True
            log.warning(
                "%s is not a set: queues go unlisted (taskq info, the dashboard) "
                "until it is deleted; jobs run as usual",
                self.keys.queues(),
            )

    def unregister(self, worker: str, queues: Sequence[str]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for q in queues:
            pipe.zrem(self.keys.workers(q), worker)
        pipe.delete(self.keys.worker(worker))
        pipe.execute()

    def dead_workers(self, queue: str, dead_before: float) -> list[str]:
        found = self.client.zrangebyscore(self.keys.workers(queue), "-inf", dead_before)
        return [text(w) or "" for w in found]

    def worker_described(self, worker: str) -> bool:
        """Whether the worker's description is still there: it expires after the
        worker's own heartbeat timeout (see :meth:`heartbeat`), so it is alive by
        its own account."""
        return bool(self.client.exists(self.keys.worker(worker)))

    def active_jobs(self, queue: str, worker: str, limit: int = 100) -> list[bytes]:
        """The newest jobs in a worker's active list, newest first: recovered in this
        order, each to the front of its queue, they are taken again oldest first."""
        return list(self.client.lrange(self.keys.active(queue, worker), 0, limit - 1))

    def recover_one(
        self,
        queue: str,
        worker: str,
        raw: bytes,
        max_stalls: int,
        dead_before: float,
        entry: dict[str, Any],
        retry_raw: bytes,
    ) -> int:
        """Requeue (1) or dead-letter (2) one job of a dead worker; see RECOVER_ONE.

        ``retry_raw`` is the job as it runs next (one attempt along)."""
        k = self.keys
        result: int = self._recover_one(
            keys=[
                k.active(queue, worker),
                k.queue(queue),
                k.workers(queue),
                k.stalls(queue),
                k.dead(queue),
                k.dead_data(queue),
                k.stats(queue),
            ],
            args=[
                raw,
                entry["id"],
                max_stalls,
                worker,
                repr(dead_before),
                dumps(entry),
                repr(entry["died_at"]),
                retry_raw,
            ],
        )
        return result

    def forget_worker(self, queue: str, worker: str, dead_before: float) -> bool:
        return bool(
            self._forget_worker(
                keys=[
                    self.keys.active(queue, worker),
                    self.keys.workers(queue),
                    self.keys.fetched(queue, worker),
                ],
                args=[worker, repr(dead_before)],
            )
        )

    def note_stall(self, job_id: str, worker: str, status: str, error: str | None = None) -> None:
        fields = {"status": status, "worker": ""}
        if error is not None:
            fields.update(error=error, finished_at=repr(time.time()))
        self._note([job_id], worker, 1, fields)

    # -- dead letters ----------------------------------------------------------------
    def dead_letters(self, queue: str, limit: int = 100) -> list[dict[str, Any]]:
        """Newest first."""
        ids = self.client.zrevrange(self.keys.dead(queue), 0, max(limit, 1) - 1)
        if not ids:
            return []
        entries = self.client.hmget(self.keys.dead_data(queue), ids)
        return [read_dead_letter(i, e) for i, e in zip(ids, entries, strict=True) if e is not None]

    def dead_letter(self, queue: str, dead_id: str) -> dict[str, Any] | None:
        raw = self.client.hget(self.keys.dead_data(queue), dead_id)
        return read_dead_letter(dead_id, raw) if raw is not None else None

    def revive_dead_letter(self, queue: str, entry: dict[str, Any]) -> str:
        """Requeue the job a dead letter holds (see :meth:`revive`); returns "" once
        requeued, else why it was not."""
        try:
            raw = entry_payload(entry)
        except (KeyError, TypeError, ValueError):
            return f"{entry['id']}: the dead letter holds no readable job; purge it instead"
        try:
            payload, _ = decode(raw)
        except BadPayload as exc:
            return f"{entry['id']}: cannot retry a bad payload ({exc}); purge it instead"
        return self.revive(queue, entry["id"], payload)

    def revive(self, queue: str, dead_id: str, payload: Payload) -> str:
        """Requeue a dead letter as a fresh job under the same id, attempts reset (once,
        even if raced), holding its unique key again if it has one. Returns "" once
        requeued, else why it was not: gone (retried or purged), or its key held by
        another job."""
        payload = dataclasses.replace(payload, attempts=0)
        raw = payload.encode()
        k = self.keys
        keys = [k.dead(queue), k.dead_data(queue), k.queue(queue), k.aborts(queue)]
        args = [dead_id, raw, payload.id, 1 if payload.key else 0]
        if payload.key:
            keys.append(k.unique(queue, payload.key))
        gone = f"{dead_id}: already retried or purged"
        fields = record_fields(payload, queue)
        if self.cluster:
            # The record goes first (a worker may end the job before a write after
            # the script), so only once the script would be expected to requeue it.
            # (A purge in between leaves it behind: on one Redis the script writes it.)
            holder = text(self.client.get(keys[4])) if payload.key else None
            if not self.client.hexists(keys[1], dead_id):
                return gone
            if holder not in (None, payload.id):
                return self._key_held(dead_id, payload, holder)
            pipe = self.client.pipeline(transaction=False)
            pipe.delete(k.job(payload.id))
            pipe.hset(k.job(payload.id), mapping=fields)
            pipe.execute()
        else:
            keys.append(k.job(payload.id))
            args += itertools.chain.from_iterable(fields.items())
        done = self._revive(keys=keys, args=args)
        if done == 1:
            return ""
        return gone if done == 0 else self._key_held(dead_id, payload, text(done))

    @staticmethod
    def _key_held(dead_id: str, payload: Payload, holder: str | None) -> str:
        return (
            f"{dead_id}: job {holder} holds its unique key {payload.key!r}; "
            "retry it once that job has ended"
        )

    def trim_dead(self, queue: str, before: float) -> int:
        """Delete the dead letters of ``queue`` that died before ``before``; returns
        how many."""
        k = self.keys
        return int(
            self._script(scripts.TRIM_DEAD)(
                keys=[k.dead(queue), k.dead_data(queue), k.stats(queue)], args=[repr(before)]
            )
        )

    def purge_dead(self, queue: str, dead_ids: Sequence[str] | None = None) -> int:
        """Delete some (or all) dead letters of a queue; returns how many."""
        if dead_ids is None:
            n: int = self.client.zcard(self.keys.dead(queue))
            self.client.delete(self.keys.dead(queue), self.keys.dead_data(queue))
            return n
        pipe = self.client.pipeline(transaction=False)
        pipe.zrem(self.keys.dead(queue), *dead_ids)
        pipe.hdel(self.keys.dead_data(queue), *dead_ids)
        removed: int = pipe.execute()[0]
        return removed

    # -- inspection ------------------------------------------------------------------
    def queue_names(self) -> list[str]:
        return sorted(text(q) or "" for q in self.client.smembers(self.keys.queues()))

    def queue_info(self, queue: str, alive_after: float) -> dict[str, Any]:
        """A queue's counts, and its live workers: those that beat after
        ``alive_after`` (the viewer's timeout) or whose own timeout has not passed
        (their description is still there), as recovery judges them."""
        k = self.keys
        every = [
            (text(w) or "", score)
            for w, score in self.client.zrange(k.workers(queue), 0, -1, withscores=True)
        ]
        late = [w for w, score in every if score < alive_after]
        pipe = self.client.pipeline(transaction=False)
        pipe.llen(k.queue(queue))
        pipe.zcard(k.delayed(queue))
        pipe.zcard(k.dead(queue))
        pipe.hgetall(k.stats(queue))
        for w, _ in every:
            pipe.llen(k.active(queue, w))
        for w in late:
            pipe.exists(k.worker(w))
        queued, delayed, dead, stats, *rest = pipe.execute()
        active, described = rest[: len(every)], rest[len(every) :]
        alive = [w for w, score in every if score >= alive_after]
        alive += [w for w, there in zip(late, described, strict=True) if there]
        counters = {text(name): int(_number(v, 0)) for name, v in stats.items()}
        return {
            "queue": queue,
            "queued": queued,
            "in_progress": sum(active),
            "delayed": delayed,
            "dead": dead,
            **{
                c: counters.get(c, 0)
                for c in ("done", "failed", "retried", "stalled", "dead_trimmed")
            },
            "workers": sorted(alive),
        }

    def workers(self, alive_after: float) -> list[dict[str, Any]]:
        """Live workers (see :meth:`queue_info`) with what they said of themselves."""
        seen: dict[str, float] = {}
        for q in self.queue_names():
            for w, score in self.client.zrange(self.keys.workers(q), 0, -1, withscores=True):
                name = text(w) or ""
                seen[name] = max(score, seen.get(name, 0.0))
        now = time.time()
        out = []
        for name in sorted(seen):
            info = fields_of(self.client.hgetall(self.keys.worker(name)))
            if seen[name] >= alive_after or info:  # its own timeout has not passed
                out.append({"id": name, "heartbeat_age": max(0.0, now - seen[name]), **info})
        return out

    # -- the dashboard (read-only) ---------------------------------------------------
    def waiting_jobs(self, queue: str, limit: int = 20) -> list[bytes]:
        """The next jobs a worker will take from a queue, next first."""
        return list(self.client.lrange(self.keys.queue(queue), -limit, -1))[::-1]

    def delayed_jobs(self, queue: str, limit: int = 100) -> list[tuple[bytes, float]]:
        """Delayed jobs and retries waiting for their backoff, soonest due first."""
        found = self.client.zrange(self.keys.delayed(queue), 0, limit - 1, withscores=True)
        return [(raw, float(due)) for raw, due in found]

    def running_jobs(
        self, worker: str, queues: Sequence[str], limit: int = 100
    ) -> dict[str, list[bytes]]:
        """The jobs in a worker's active list of each queue, oldest first."""
        pipe = self.client.pipeline(transaction=False)
        for q in queues:
            pipe.lrange(self.keys.active(q, worker), -limit, -1)
        return {q: list(raws)[::-1] for q, raws in zip(queues, pipe.execute(), strict=True)}


def text(value: bytes | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.decode("utf-8", "replace")


def _number(value: bytes | str, unreadable: float) -> float:
    """A number Redis holds (a counter, a time), or ``unreadable`` if it is not one."""
    try:
        number = float(value)
    except ValueError:
        return unreadable
    return number if math.isfinite(number) else unreadable


def read_dead_letter(dead_id: bytes | str, raw: bytes) -> dict[str, Any]:
    """A dead letter as stored (see :func:`taskq.writes.dead_entry`), under its id. One
    that cannot be read (written by hand, say) is listed as such, to be purged."""
    try:
        entry = json.loads(raw)
        problem = f"a JSON {type(entry).__name__}, not an object"
    except (ValueError, RecursionError) as exc:
        entry, problem = None, f"not JSON ({exc})"
    if not isinstance(entry, dict):
        entry = {
            "reason": f"unreadable dead letter: {problem}",
            "payload": raw.decode("utf-8", "replace"),
        }
    entry["id"] = text(dead_id)
    died_at = entry.get("died_at")
    if isinstance(died_at, bool) or not isinstance(died_at, int | float):
        entry["died_at"] = 0.0
    return entry


def fields_of(raw: dict[Any, Any]) -> dict[str, str]:
    return {text(k) or "": text(v) or "" for k, v in raw.items()}


class _Waits:
    """The BLMOVEs of :meth:`Broker.fetch_blocking_any`, one a connection, each
    given up alone when its connection fails: the others' jobs are still read."""

    def __init__(self, conns: list[Any]) -> None:
        self.conns = conns
        self._live = set(range(len(conns)))  # waits whose BLMOVE reply is to be read
        self._failed: set[int] = set()  # connections given up
        self._moves: dict[int, bytes] = {}
        self._error: Exception | None = None

    def live(self) -> list[int]:
        return sorted(self._live)

    def _lost(self, n: int, exc: Exception) -> None:
        self.conns[n].disconnect()  # replies may be left unread: never reuse it as it is
        self._live.discard(n)
        self._failed.add(n)
        self._error = self._error or exc

    def _guard(self, n: int, call: Callable[[], T]) -> T | None:
        """``call()`` on wait ``n``; a connection error gives that wait up (None);
        anything else (a refusal, say) goes on up."""
        try:
            return call()
        except redis.ResponseError:
            raise
        except (redis.RedisError, OSError) as exc:
            self._lost(n, exc)
            return None

    def send(self, n: int, commands: list[tuple[Any, ...]]) -> bool:
        conn = self.conns[n]
        packed = conn.pack_commands(commands)
        # No health check: its reconnection would skip a Sentinel connection's own.
        if n not in self._failed:
            self._guard(n, lambda: conn.send_packed_command(packed, check_health=False))
        return n not in self._failed

    def read(self, n: int) -> Any:
        """The next reply on wait ``n``'s connection (None if it failed)."""
        if n in self._failed:
            return None
        return self._guard(n, self.conns[n].read_response)

    def read_move(self, n: int) -> None:
        """Read wait ``n``'s BLMOVE reply: the job it moved, if any; it is over."""
        try:
            raw = self.read(n)
        except redis.ResponseError as exc:  # WRONGTYPE, say
            self._error = self._error or exc
            raw = None
        self._live.discard(n)
        if raw is not None:
            self._moves[n] = raw

    def first_to_answer(self, deadline: float) -> int | None:
        """A live wait whose reply has come (one already read into a buffer with
        CLIENT ID's counts), waiting until ``deadline`` (monotonic); None if none
        came. A connection found failed meanwhile is given up and waiting goes on."""
        while self._live:
            for n in self.live():
                if self._guard(n, functools.partial(self.conns[n].can_read, timeout=0)):
                    return n
            live = self.live()  # less those found failed
            left = deadline - time.monotonic()
            if not live or left <= 0:
                return None
            with selectors.DefaultSelector() as selector:
                for n in live:
                    selector.register(self.conns[n]._sock, selectors.EVENT_READ, n)
                if not selector.select(left):
                    return None
        return None

    def failed(self) -> list[int]:
        """The waits whose connection failed."""
        return sorted(self._failed)

    def same_server(self, n: int, m: int) -> bool:
        """Whether waits ``n`` and ``m`` are connected to the same server."""
        a, b = self.conns[n], self.conns[m]
        return all(getattr(a, k, None) == getattr(b, k, None) for k in ("host", "port", "path"))

    def moves(self) -> list[tuple[int, bytes]]:
        """The jobs moved, by wait; raises the first error if no job was moved."""
        if self._error is not None:
            if not self._moves:
                raise self._error
            log.warning("lost the wait on a queue (%r); took the jobs of the others", self._error)
        return sorted(self._moves.items())
