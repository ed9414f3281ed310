"""Shared test helpers: waiting on events, workers in threads and in processes, and
scraping a worker's metrics."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from prometheus_client.parser import text_string_to_metric_families

from taskq import App, Worker

from .proc import TaskqProcess


@contextmanager
def tasks_app_at(url: str) -> Iterator[App]:
    """The test tasks' App, pointed at ``url`` for the length of the block."""
    from . import tasks

    tasks.app.close()
    tasks.app.configure(redis_url=url)
    try:
        yield tasks.app
    finally:
        tasks.app.close()


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def wait_event(r: redis.Redis | redis.RedisCluster, name: str, timeout: float = 15) -> None:
    """Block until the next event on the `events` list, and check it is ``name``."""
    got = r.blpop(["events"], timeout=timeout)
    assert got is not None, f"no event {name!r} within {timeout}s"
    assert as_text(got[1]) == name


def blocked_moves(r: redis.Redis) -> int:
    """Clients blocked in a BLMOVE now (an idle master waits in them)."""
    return sum(1 for c in r.client_list() if c.get("cmd") == "blmove" and "b" in c["flags"])


def until_blocked(r: redis.Redis, count: int) -> None:
    """Wait until ``count`` clients are blocked in a BLMOVE."""
    for _ in range(500):
        if blocked_moves(r) == count:
            return
        r.blpop(["never"], timeout=0.01)  # a short wait inside Redis, then look again
    assert blocked_moves(r) == count, r.client_list()


def start_worker(env: dict[str, str], *args: str) -> TaskqProcess:
    """`taskq worker --app tests.tasks ARGS` as a subprocess, once it has started."""
    proc = TaskqProcess(["worker", "--app", "tests.tasks", *args], env)
    try:
        proc.wait_for_line(r"worker \S+ started")
    except BaseException:
        proc.__exit__()
        raise
    return proc


@contextmanager
def worker_thread(app: App, **options: Any) -> Iterator[Worker]:
    """A non-burst worker running in a thread for the length of the block."""
    worker = Worker(app, handle_signals=False, **options)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="test-worker")
    thread.start()
    assert worker.started.wait(10) or errors, "worker did not start"
    try:
        yield worker
    finally:
        worker.stop("test over")
        thread.join(30)
        assert not thread.is_alive(), "worker did not stop"
    if errors:
        raise errors[0]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class LossyProxy:
    """A TCP proxy to a Redis server that can lose a reply for real: the command goes
    through and Redis runs it, then the connection is cut before its reply reaches
    the client (a network failure at the worst moment)."""

    def __init__(self, port: int) -> None:
        self.target = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._marker: bytes | None = None
        self._after = 0
        self._before_redis = False
        self._sockets: set[socket.socket] = set()
        self.doomed = threading.Event()  # set once the command whose reply is lost went by
        self.lost = threading.Event()  # set once a reply was lost
        self._hold = False
        self._released = threading.Event()
        self.held = threading.Event()  # set once a command is held up (see hold)
        self.delivered = threading.Event()  # set once it reached Redis, or could not
        threading.Thread(target=self._accept, daemon=True).start()

    def lose_reply_to(self, marker: bytes, after: int = 0, before_redis: bool = False) -> None:
        """Cut the connection that next sends a command containing ``marker``, as
        soon as its reply starts to come back (``after`` replies of commands sent
        with it still go through: each must come back alone); or, ``before_redis``,
        as it sends the command, which Redis then never gets."""
        self._marker, self._after, self._before_redis = marker, after, before_redis

    def hold(self, marker: bytes) -> None:
        """Hold up what the connection that next sends ``marker`` sends from then on,
        until :meth:`release`: its client times out waiting for the reply and gives
        the connection up, while what it sent is still on its way to Redis."""
        self._marker, self._hold = marker, True

    def release(self) -> None:
        """Let what :meth:`hold` held up go on to Redis, late; :attr:`delivered` is
        set once Redis has run it (and closed the connection at its end) or refused
        to take it (the connection was closed)."""
        self._released.set()

    def close(self) -> None:
        """Stop accepting and cut every connection."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self._listener.close()
        for sock in list(self._sockets):
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
                server = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                return
            self._sockets.update((client, server))
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        doomed, passing = False, 0
        sent = b""  # the end of what the client sent: a marker may span two reads
        try:
            while True:
                ready, _, _ = select.select([client, server], [], [])
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client:
                        marker = self._marker
                        sent = sent[-len(marker) :] + data if marker else b""
                        if marker is not None and marker in sent and self._hold:
                            self._marker, self._hold = None, False
                            self.held.set()
                            self._released.wait()
                            self._deliver_late(client, server, data)
                            return
                        if marker is not None and marker in sent:
                            self._marker, doomed, passing = None, True, self._after
                            self.doomed.set()
                            if self._before_redis:
                                self.lost.set()
                                return
                        server.sendall(data)
                    elif doomed and passing:
                        passing -= 1
                        client.sendall(data)
                    elif doomed:  # the reply: never delivered
                        self.lost.set()
                        return
                    else:
                        client.sendall(data)
        except (OSError, ValueError):  # cut, or closed by close() (a socket of fd -1)
            return
        finally:
            client.close()
            server.close()
            self._sockets.difference_update((client, server))

    def _deliver_late(self, client: socket.socket, server: socket.socket, data: bytes) -> None:
        try:
            while data:  # what was held, then what the client sent after it, to its end
                server.sendall(data)
                data = client.recv(65536)
            server.shutdown(socket.SHUT_WR)
            while server.recv(65536):  # Redis closes the connection once it ran it all
                pass
        except OSError:  # closed by Redis
            pass
        finally:
            self.delivered.set()
