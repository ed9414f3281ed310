"""A private redis-server for the tests: started on a free loopback port, killable."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import redis

INSTALL_HINT = (
    "redis-server not found: the tests start their own. Install Redis 6.2+ "
    "(Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis) and rerun."
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process on 127.0.0.1:``port``, with its data in ``dir``."""

    def __init__(
        self, appendonly: bool = False, password: str | None = None, replica_of: int | None = None
    ) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise RuntimeError(INSTALL_HINT)
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="taskq-redis-"))
        self.appendonly = appendonly
        self.password = password
        self.replica_of = replica_of  # the port of a master on 127.0.0.1
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        """The same server through its unix socket."""
        auth = f":{self.password}@" if self.password else ""
        return f"unix://{auth}{self.dir / 'redis.sock'}?db=0"

    def start(self) -> None:
        args = [
            self.binary or "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
            "--logfile",
            str(self.dir / "redis.log"),
            "--unixsocket",
            str(self.dir / "redis.sock"),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        if self.replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_ready()

    def wait_ready(self, timeout: float = 10.0) -> None:
        def ready(client: redis.Redis) -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: see {self.dir / 'redis.log'}")
            return bool(client.ping())

        wait_until(self.port, ready, "ready", timeout, password=self.password)

    def kill(self) -> None:
        """SIGKILL the server (it loses what it did not write to its AOF)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()


def free_cluster_port() -> int:
    """A free port P whose cluster bus port P + 10000 is free (and exists) too."""
    for _ in range(100):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisCluster:
    """A three-master Redis Cluster on loopback ports, made with redis-cli --cluster."""

    def __init__(self, masters: int = 3) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="taskq-cluster-"))
        self.ports = [free_cluster_port() for _ in range(masters)]
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis-cluster://127.0.0.1:{self.ports[0]}"

    def start(self) -> None:
        for port in self.ports:
            node_dir = self.dir / str(port)
            node_dir.mkdir()
            self.procs.append(
                subprocess.Popen(
                    [
                        "redis-server",
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(node_dir),
                        "--logfile",
                        str(node_dir / "redis.log"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in self.ports:
            wait_until(port, lambda c: bool(c.ping()), "cluster node ready")
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        for port in self.ports:
            wait_until(port, lambda c: c.cluster("info")["cluster_state"] == "ok", "cluster ok")

    def flush(self) -> None:
        for port in self.ports:
            with redis.Redis(port=port) as client:
                client.flushall()

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        self.procs.clear()


def wait_until(
    port: int,
    ready: Callable[[redis.Redis], bool],
    what: str,
    timeout: float = 30,
    password: str | None = None,
) -> None:
    """Ask the server on ``port`` until ``ready(client)`` holds: a server starting,
    or what only it can tell (a sentinel's failover done). Raises after ``timeout``;
    ``ready`` may raise to give up at once."""
    client = redis.Redis(
        port=port, password=password, decode_responses=True, socket_connect_timeout=0.5
    )
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                if ready(client):
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"port {port}: not {what} within {timeout}s")
            time.sleep(0.02)  # asking again a server that cannot notify, within a deadline
    finally:
        client.close()


class RedisSentinel:
    """A master, its replica and one sentinel watching them as service ``mymaster``
    (quorum 1): kill the master and the sentinel promotes the replica."""

    SERVICE = "mymaster"

    def __init__(self) -> None:
        self.master = RedisServer()
        self.replica = RedisServer(replica_of=self.master.port)
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="taskq-sentinel-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.SERVICE}"

    def start(self) -> None:
        self.master.start()
        self.replica.start()
        config = self.dir / "sentinel.conf"  # a sentinel rewrites its own config file
        config.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.dir}\n"
            f"logfile {self.dir / 'sentinel.log'}\n"
            f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {self.SERVICE} 300\n"
            f"sentinel failover-timeout {self.SERVICE} 5000\n"
        )
        self.proc = subprocess.Popen(
            ["redis-server", str(config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.replica.port, _replicating, "replicating")
        wait_until(self.port, self._sees_replica, "watching the replica")

    def _sees_replica(self, client: redis.Redis) -> bool:
        state: Any = client.sentinel_master(self.SERVICE)
        return int(state["num-slaves"]) == 1

    def promoted(self, client: redis.Redis) -> bool:
        """Whether the sentinel gives the replica as the master, in a state clients
        accept (up, and known as a master)."""
        state: Any = client.sentinel_master(self.SERVICE)
        return (
            int(state["port"]) == self.replica.port
            and state["is_master"]
            and not (state["is_sdown"] or state["is_odown"])
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        self.master.kill()
        self.replica.kill()


def _replicating(client: redis.Redis) -> bool:
    return client.info("replication").get("master_link_status") == "up"


class _Startable(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


S = TypeVar("S", bound=_Startable)


@contextmanager
def running(server: S) -> Iterator[S]:
    """``server`` started for the length of the block, stopped after (even if
    it failed to start half-way)."""
    try:
        server.start()
        yield server
    finally:
        server.stop()
