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

from common.jobs import JobStore, running_field

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
    """Beats ``store.beat(owner, ...)`` every ``interval`` seconds until stopped."""

    def __init__(self, store: JobStore, owner: str, interval: float, device: str):
        self.store, self.owner, self.interval = store, owner, interval
        self.description: dict[str, Any] = {
            "device": device,
            "healthy": True,
            "started": time.time(),
            "pid": os.getpid(),
            "holding": [],  # the renders it is working on: the reaper's check on live owners
        }
        self.holding: set[str] = set()
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
        try:
            self.store.beat(self.owner, self.description)
        except Exception as exc:  # Redis away: the next beat tries again
            log.warning("heartbeat failed: %s", exc)

    def hold(self, job_id: str, render_id: str) -> None:
        with self.lock:
            self.holding.add(running_field(job_id, render_id))

    def drop(self, job_id: str, render_ids: list[str]) -> None:
        with self.lock:
            self.holding -= {running_field(job_id, r) for r in render_ids}

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
