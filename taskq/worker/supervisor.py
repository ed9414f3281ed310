"""``taskq worker --processes N``: N worker processes, supervised.

Each child is a whole ``taskq worker`` (its own master thread and event loop). The
parent restarts a child that crashes (with backoff if it keeps crashing), forwards
SIGINT/SIGTERM so each child drains gracefully (a second signal skips their grace
period too), and exits 0 once every child has exited cleanly.

Children run in their own session, so a Ctrl+C in the terminal reaches only the
parent, which forwards it once; on Linux they also get SIGTERM if the parent dies.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

log = logging.getLogger(__name__)

#: A child that lived at least this long has its crash backoff reset.
STABLE_SECONDS = 60.0
MAX_BACKOFF = 30.0


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class Child:
    slot: int
    proc: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    crashes: int = 0


class Supervisor:
    def __init__(
        self,
        args: list[str],
        processes: int,
        env: dict[str, str],
        on_exit: Callable[[int], object] | None = None,
    ) -> None:
        self.on_exit = on_exit  # called with the pid of each child that exits
        self.args = args  # `taskq worker` arguments for each child
        self.processes = processes
        self.env = env
        self.children: dict[int, Child] = {}
        self.signals: list[signal.Signals] = []
        self.failed = False

    def _spawn(self, slot: int, crashes: int = 0) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskq", "worker", *self.args],
            env=self.env,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
        )
        self.children[slot] = Child(slot, proc, crashes=crashes)
        log.info("worker process %d started (pid %d)", slot, proc.pid)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        self.signals.append(sig)
        for child in self.children.values():
            if child.proc.poll() is None:
                child.proc.send_signal(sig)

    def run(self) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for slot in range(self.processes):
                self._spawn(slot)
            log.info("supervising %d worker processes", self.processes)
            restarts: dict[int, tuple[float, int]] = {}  # slot -> (when, crashes so far)
            while self.children or restarts:
                if self.signals:
                    restarts.clear()
                self._wait(restarts)
                for child in [c for c in self.children.values() if c.proc.poll() is not None]:
                    del self.children[child.slot]
                    self._exited(child, child.proc.returncode, restarts)
                now = time.monotonic()
                for slot, (when, crashes) in list(restarts.items()):
                    if when <= now and not self.signals:
                        del restarts[slot]
                        self._spawn(slot, crashes)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        reason = self.signals[0].name if self.signals else "every worker finished"
        log.info("all worker processes stopped (%s)", reason)
        return 1 if self.failed else 0

    def _wait(self, restarts: dict[int, tuple[float, int]]) -> None:
        """Block until a child exits, or until the next restart is due."""
        if not restarts:
            if self.children:  # none when a signal came as they all awaited a restart
                # Signals are forwarded by the handler; this wait resumes after them.
                os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
            return
        due = min(when for when, _ in restarts.values())
        while time.monotonic() < due and not self.signals:
            if any(c.proc.poll() is not None for c in self.children.values()):
                return
            time.sleep(min(0.1, max(0.0, due - time.monotonic())))

    def _exited(self, child: Child, code: int, restarts: dict[int, tuple[float, int]]) -> None:
        if self.on_exit is not None:
            self.on_exit(child.proc.pid)
        if code == 0:
            log.info("worker process %d exited", child.slot)
            return
        if self.signals:
            if -code in (signal.SIGTERM, signal.SIGINT):
                # Killed by the forwarded signal before it could handle it: it was
                # still starting, so it held no job.
                log.info("worker process %d stopped while starting", child.slot)
                return
            self.failed = True
            log.error("worker process %d exited with %d while stopping", child.slot, code)
            return
        crashes = 1 if time.monotonic() - child.started >= STABLE_SECONDS else child.crashes + 1
        delay = min(MAX_BACKOFF, 0.5 * 2 ** (crashes - 1))
        log.error(
            "worker process %d (pid %d) exited with %d; restarting in %.1fs",
            child.slot,
            child.proc.pid,
            code,
            delay,
        )
        restarts[child.slot] = (time.monotonic() + delay, crashes)
