"""The asyncio verbs: a worker's event loop thread, and async producers.

One :class:`AsyncBroker` per event loop: its client belongs to that loop. Changes
are built by :class:`taskq.writes.WriteBuilder`, shared with the sync broker.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio as aioredis

from . import scripts
from .broker import (
    PROMOTE_BATCH,
    PUSH_BATCH,
    Client,
    Landed,
    client_described,
    fields_of,
    is_cluster,
    own_connection,
    pack,
    queue_records,
    queue_status,
    raw_command,
    raw_commands,
    refused_for_now,
    reply_errors,
    text,
    wrong_type,
)
from .connection import AsyncSentinelRedis
from .keys import Keys
from .payload import Payload
from .writes import WriteBuilder, Writes, round_trips


class AsyncBroker:
    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys | None = None,
        result_ttl: int = 86_400,
        dead_retention: int = 7 * 86_400,
    ) -> None:
        self.client: Any = client  # loosely typed: see Broker
        self.keys = keys or Keys()
        self.cluster = is_cluster(client)
        self.writes = WriteBuilder(self.keys, result_ttl, dead_retention)
        self._scripts: dict[str, Any] = {}
        # As in Broker: writes go straight to a connection on one Redis, on this
        # broker's own while no other write of this loop holds it.
        self._raw = type(client) in (aioredis.Redis, AsyncSentinelRedis)
        self._own: Any = None
        self._own_busy = False

    def _script(self, source: str) -> Any:
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self.client.register_script(source)
        return script

    async def apply(self, w: Writes) -> None:
        """Carry out ``w`` in its phase order (see :func:`taskq.writes.round_trips`)."""
        if self._raw:
            await self._send(raw_commands(w, anew=True))
            return
        for trip in round_trips(w, self.cluster):
            if not trip.commands and len(trip.scripts) == 1:
                source, keys, args = trip.scripts[0]
                await self._script(source)(keys=keys, args=args)
                continue
            pipe = self.client.pipeline(transaction=False)
            for name, key, command_args in trip.commands:
                pipe.execute_command(*raw_command(name, key, command_args, anew=True))
            for source, keys, args in trip.scripts:
                await self._script(source)(keys=keys, args=args, client=pipe)
            await pipe.execute()

    async def _write(
        self, w: Writes, check: Landed | None = None, maybe_sent: bool = False
    ) -> None:
        await self._send(raw_commands(w), check, maybe_sent)

    async def _send(
        self,
        commands: list[tuple[Any, ...]],
        check: Landed | None = None,
        maybe_sent: bool = False,
    ) -> None:
        """Send ``commands`` straight on a connection and read their replies; see
        :meth:`taskq.broker.Broker._straight` for ``check`` and ``maybe_sent``."""
        conn, own = await self._borrow()
        sent = maybe_sent
        sent_on: Client | None = None  # the connection of the last attempt

        async def attempt() -> None:
            nonlocal sent, sent_on
            await _ensure_connected(conn)
            if check is not None:
                sent_on = await _client_of(conn)
                if sent and await _landed(conn, check):
                    return
            sent = True
            await self._send_and_read(conn, commands)

        async def dropped(_error: object = None) -> None:
            nonlocal sent_on
            if sent and sent_on is not None and check is not None:
                check.lost.append(sent_on)
            sent_on = None
            await conn.disconnect()

        try:
            # On a lost connection, as redis-py retries its own commands.
            await conn.retry.call_with_retry(attempt, dropped)
        except (redis.ConnectionError, redis.TimeoutError):
            # Fenced too where the client's Retry does not handle this error.
            await dropped()
            if not (sent and check is not None and await _landed_after_all(conn, check)):
                await conn.disconnect()  # replies may be left unread
                raise
        except BaseException:
            await dropped()  # replies may be left unread: never reuse it as it is
            raise
        finally:
            if own:
                self._own_busy = False
            else:
                await self.client.connection_pool.release(conn)

    @staticmethod
    async def _send_and_read(conn: Any, commands: list[tuple[Any, ...]]) -> None:
        """See :meth:`taskq.broker.Broker._send_and_read` (on a connected connection)."""
        await conn.send_packed_command(pack(conn, commands), check_health=False)
        errors = []
        for _ in commands:
            try:
                errors += reply_errors(await conn.read_response())
            except redis.ResponseError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    async def _borrow(self) -> tuple[Any, bool]:
        pool = self.client.connection_pool
        if self._own_busy:
            return await _pool_connection(pool), False
        self._own_busy = True
        try:
            if self._own is None:
                self._own = own_connection(pool)
            elif await _closed_while_idle(self._own):
                await self._own.disconnect()  # connected again before use
        except BaseException:
            self._own_busy = False
            raise
        return self._own, True

    async def aclose(self) -> None:
        """Close the client's connections and the broker's own."""
        if self._own is not None:
            await self._own.disconnect()
        await self.client.aclose()

    async def push(
        self, queue: str, jobs: Sequence[tuple[Payload, bytes]], due: float | None = None
    ) -> None:
        lost: list[Client] = []  # see Landed
        try:
            if len(jobs) == 1 and due is None and self._raw:  # the usual push
                commands = self.writes.push_one(queue, *jobs[0])
                if commands is not None:
                    await self._send(commands, Landed(self.keys, queue, None, jobs[0][0]))
                    return
            for start in range(0, len(jobs), PUSH_BATCH):
                chunk = jobs[start : start + PUSH_BATCH]
                w = self.writes.push(queue, chunk, due, once=self.cluster)
                if not self._raw:
                    await self.apply(w)
                    continue
                # One transaction a chunk: its first job's record tells.
                check = Landed(self.keys, queue, due, chunk[0][0], lost)
                try:
                    await self._write(w, check)
                except (redis.ConnectionError, redis.TimeoutError):
                    if len(jobs) <= PUSH_BATCH:
                        raise
                    # Not raised with chunks already queued (see Broker._push_again):
                    # sent again, unless Redis has it after all.
                    self.writes.register_again(queue)
                    w = self.writes.push(queue, chunk, due)
                    await self._write(w, check, maybe_sent=True)
        except (redis.ConnectionError, redis.TimeoutError):
            self.writes.register_again(queue)  # see Broker.push
            raise
        except redis.ResponseError:  # see Broker.push
            target, kind = self.keys.push_target(queue, due)
            with contextlib.suppress(redis.RedisError):  # the refusal is what to report
                if wrong_type(await self.client.type(target), kind):
                    await self.client.delete(*(self.keys.job(payload.id) for payload, _ in jobs))
            raise

    async def promote(self, queue: str, now: float) -> tuple[int, float | None]:
        """See :meth:`taskq.broker.Broker.promote`."""
        moved, next_due = await self._script(scripts.PROMOTE)(
            keys=[self.keys.delayed(queue), self.keys.queue(queue)], args=[repr(now), PROMOTE_BATCH]
        )
        return int(moved), float(next_due) if next_due else None

    async def push_unique(self, queue: str, payload: Payload, raw: bytes, due: float | None) -> str:
        """See :meth:`taskq.broker.Broker.push_unique`."""
        assert payload.key is not None
        w = self.writes.push(queue, [(payload, raw)], due)
        await self.apply(Writes(records=w.records, scripts=w.scripts))
        target = self.keys.queue(queue) if due is None else self.keys.delayed(queue)
        try:
            holder = await self._script(scripts.PUSH_UNIQUE)(
                keys=[self.keys.unique(queue, payload.key), target],
                args=[payload.id, raw, "" if due is None else repr(due)],
            )
        except redis.ResponseError:  # refused (the queue's type, say): no job, no record
            await self.client.delete(self.keys.job(payload.id))
            raise
        holder = text(holder) or ""
        if holder != payload.id:
            await self.client.delete(self.keys.job(payload.id))
        return holder

    async def statuses(self, job_ids: Sequence[str]) -> list[str | None]:
        pipe = self.client.pipeline(transaction=False)
        queue_status(pipe, self.keys, job_ids)
        return [text(s) for s in await pipe.execute()]

    async def record(self, job_id: str) -> dict[str, str]:
        return fields_of(await self.client.hgetall(self.keys.job(job_id)))

    async def records(self, job_ids: Sequence[str]) -> list[dict[str, str]]:
        pipe = self.client.pipeline(transaction=False)
        queue_records(pipe, self.keys, job_ids)
        return [fields_of(r) for r in await pipe.execute()]


async def _client_of(conn: Any) -> Client | None:
    """See :func:`taskq.broker.client_of` (the token: the connection's writer)."""
    known = getattr(conn, "_taskq_client", None)
    if known is not None and known[0] is conn._writer:
        cached: Client | None = known[1]
        return cached
    await conn.send_packed_command(pack(conn, [("CLIENT", "INFO")]), check_health=False)
    try:
        found = client_described(await conn.read_response())
    except redis.ResponseError as exc:
        if refused_for_now(exc):
            return None  # asked again next time
        found = None
    conn._taskq_client = (conn._writer, found)
    return found


async def _landed(conn: Any, check: Landed) -> bool:
    """See :func:`taskq.broker.landed`."""
    commands = check.commands()
    await conn.send_packed_command(pack(conn, commands), check_health=False)
    replies: list[Any] = []
    for _ in commands:
        try:
            replies.append(await conn.read_response())
        except redis.ResponseError as exc:
            replies.append(exc)
    return check.answer(replies)


async def _landed_after_all(conn: Any, check: Landed) -> bool:
    """See :func:`taskq.broker._landed_after_all`."""
    await conn.disconnect()
    try:
        await _ensure_connected(conn)
        return await _landed(conn, check)
    except (redis.ConnectionError, redis.TimeoutError):
        return False


async def _pool_connection(pool: Any) -> Any:
    try:
        return await pool.get_connection()
    except TypeError:  # redis-py 5 wants a command name
        return await pool.get_connection("EVAL")


async def _ensure_connected(conn: Any) -> None:
    """See :func:`taskq.broker.ensure_connected`."""
    if not conn.is_connected:
        await conn.connect()


async def _closed_while_idle(conn: Any) -> bool:
    """See :func:`taskq.broker.closed_while_idle`."""
    if not conn.is_connected:
        return False  # sending connects it
    # can_read (redis-py 8) or can_read_destructive (5 to 7): neither waits.
    can_read = getattr(conn, "can_read", None) or conn.can_read_destructive
    try:
        return bool(await can_read())
    except (redis.RedisError, OSError):
        return True
