"""A render process's identity and heartbeat.

The owner of a running render is one process: ``node|host|pid|token`` (the token tells a
restarted container's process from its predecessor with the same pid). Its heartbeat is a thread,
so it stays fresh through a long optimisation (torch releases the GIL while it computes); when
the process dies, the beats stop and the reaper re-drives its renders. A process on the same
host can tell at once that another is gone (its pid is not alive), which is what a task
redelivered after its pool process was killed finds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from typing import Any

from common.state import Held, JobStore

log = logging.getLogger("stylebatch.liveness")


def owner_id(node: str) -> str:
    return f"{node}|{socket.gethostname()}|{os.getpid()}|{secrets.token_hex(3)}"


def known_dead(owner: str) -> str:
    """``owner`` if it is a process on this host that no longer exists, else ''."""
    try:
        _, host, pid, _ = owner.rsplit("|", 3)
        if host != socket.gethostname() or int(pid) == os.getpid():
            return ""
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return owner
    except (ValueError, PermissionError, OSError):
        return ""
    return ""


class Heartbeat:
    """Beats ``store.beat(owner, ...)`` every ``interval`` seconds until stopped, with the
    renders (and attempts) this process holds; the answer names any taken from it since (it
    was paused or cut off past the worker timeout), which the render then abandons."""

    def __init__(self, store: JobStore, owner: str, interval: float, device: str):
        self.store, self.owner, self.interval = store, owner, interval
        self.description: dict[str, Any] = {
            "device": device,
            "healthy": True,
            "started": time.time(),
            "pid": os.getpid(),
            "holding": [],  # the renders it is working on: the reaper's check on live owners
        }
        self.holding: dict[str, Held] = {}
        self.stale: set[str] = set()  # renders taken from this process: do not write them
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="stylebatch-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self.beat()
        self.thread.start()
        return self

    def beat(self) -> None:
        with self.lock:
            self.description["holding"] = sorted(self.holding)
            held = list(self.holding.values())
        try:
            answer = self.store.beat(self.owner, self.description, held)
        except Exception as exc:  # Redis away: the next beat tries again
            log.warning("heartbeat failed: %s", exc)
            return
        with self.lock:
            lost = {f for f in answer.stale if f in self.holding}
            self.stale |= lost
        for fld in lost:
            log.warning("render %s was taken from this process (superseded); abandoning", fld)

    def hold(self, held: Held) -> None:
        with self.lock:
            self.holding[held.field] = held
            self.stale.discard(held.field)

    def holds(self, held: Held) -> bool:
        """False once the heartbeat learnt that another attempt has this render."""
        with self.lock:
            return held.field not in self.stale

    def drop(self, held: list[Held]) -> None:
        with self.lock:
            for h in held:
                self.holding.pop(h.field, None)
                self.stale.discard(h.field)

    def unhealthy(self, reason: str) -> None:
        self.description.update(healthy=False, reason=reason, since=time.time())
        self.beat()

    def stop(self) -> None:
        """Stop beating; a healthy process also leaves the roll (an unhealthy one stays on it,
        for operators to see, until the reaper drops it)."""
        self.stopped.set()
        if self.description["healthy"]:
            with contextlib.suppress(Exception):
                self.store.forget(self.owner)

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.beat()
