"""Recovery: nothing stuck, nothing counted twice.

- **Reaping.** A worker process that has not beaten for ``worker_timeout`` seconds is dead:
  each render it held counts one crash and goes back to pending (failed at the crash cap) and
  is enqueued again. A slow render is never reaped: its process beats from a thread.
- **Reconciling.** A job whose submit died before all its tasks were sent (for
  ``stall_after`` seconds), or a running job with pending renders, nothing running, no
  activity for ``stall_after`` seconds and no task in the broker's queues, has its pending
  renders enqueued again. A job finalizing for
  ``stall_after`` seconds has its finalize sent again (a lost message).
- Both run in the bookkeeping worker every ``watchdog_interval`` seconds (``Watchdog``); a lock
  in Redis makes one pass at a time fleet-wide. A second task for a render is harmless: the
  render's state decides, and a duplicate is ignored.

The broker's visibility timeout stays as the last backstop.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import threading
from collections import defaultdict
from typing import Any

from celery import Celery

from common.jobs import JobStore, running_field
from common.queue import FINALIZE_TASK, MAX_CRASHES, RENDER_QUEUE
from common.settings import Settings

log = logging.getLogger("stylebatch.recovery")
LOCK = "sb:watchdog"


def redrive(
    job_id: str, render_ids: list[str], store: JobStore, app: Celery, settings: Settings
) -> int:
    """Enqueue new tasks for the renders of a job that are still pending; returns tasks."""
    from scheduler.submit import enqueue

    info = store.get(job_id)
    if info is None or info.terminal or not render_ids:
        return 0
    pending = store.with_status(job_id, "pending", among=sorted(set(render_ids)))
    specs = store.specs(job_id, pending) if pending else []
    if not specs:
        return 0
    tasks = enqueue(app, job_id, specs, int(info.meta.get("priority", 5)), settings)
    store.touch(job_id)
    log.warning("job %s: %d render(s) enqueued again in %d task(s)", job_id, len(specs), tasks)
    return tasks


def queued_jobs(store: JobStore) -> set[str]:
    """Jobs with a render task waiting in the broker or delivered and not yet acknowledged
    (kombu's Redis transport: one list per priority, and the ``unacked`` hash)."""
    r = store.r
    queues = [RENDER_QUEUE] + [f"{RENDER_QUEUE}:{p}" for p in range(1, 10)]
    found: set[str] = set()

    def note(raw: str | bytes) -> None:
        try:
            message = json.loads(raw)
            body = message["body"]
            if message.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            _, kwargs, _ = json.loads(body)
            found.add(kwargs["job_id"])
        except (ValueError, KeyError, TypeError):
            pass  # not a render task of ours

    for queue in queues:
        length = r.llen(queue)
        for start in range(0, length, 500):
            for raw in r.lrange(queue, start, start + 499):
                note(raw)
    for _, raw in r.hscan_iter("unacked", count=500):
        with contextlib.suppress(ValueError, IndexError, TypeError):
            note(json.dumps(json.loads(raw)[0]))
    return found


def recover_job(
    job_id: str, store: JobStore, app: Celery, settings: Settings, queued: set[str] | None = None
) -> int:
    """Enqueue what an existing job lacks (a resubmit, or the reconciler); returns tasks."""
    info = store.get(job_id)
    if info is None or info.status != "running" or info.pending == 0:
        return 0
    if info.meta.get("sent") != "1":  # its submit died part way: every pending render again
        tasks = redrive(job_id, store.with_status(job_id, "pending"), store, app, settings)
        store.mark_sent(job_id)
        return tasks
    if info.running:
        return 0
    if queued is None:
        queued = queued_jobs(store)
    if job_id in queued:
        return 0
    return redrive(job_id, store.with_status(job_id, "pending"), store, app, settings)


def reap(store: JobStore, app: Celery, settings: Settings) -> dict[str, int]:
    """Re-drive the renders of worker processes whose heartbeat is gone."""
    silent = set(store.silent_owners(settings.worker_timeout))
    known = set(store.r.zrange(store.HEARTBEATS, 0, -1))
    workers = store.workers()
    now = store.now()
    again: dict[str, list[str]] = defaultdict(list)
    reaped = gave_up = 0
    holding = set()
    for job_id, render_id, owner in store.running_renders():
        alive = owner not in silent and owner in known
        if alive and not _abandoned(
            store, job_id, render_id, workers.get(owner, {}), now, settings
        ):
            holding.add(owner)
            continue
        claim = store.reap(job_id, render_id, owner, MAX_CRASHES)
        if claim.outcome == "requeued":
            reaped += 1
            again[job_id].append(render_id)
            log.warning(
                "render %s of job %s: worker %s is gone; re-driven", render_id, job_id, owner
            )
        elif claim.outcome == "gave_up":
            gave_up += 1
            if claim.complete:
                app.send_task(FINALIZE_TASK, args=[job_id])
    tasks = sum(redrive(job, ids, store, app, settings) for job, ids in again.items())
    threshold = store.now() - settings.worker_timeout
    for owner in silent - holding:
        score = store.r.zscore(store.HEARTBEATS, owner)
        if score is None or score < threshold:  # it did not come back meanwhile
            store.forget(owner)
    return {"reaped": reaped, "gave_up": gave_up, "reaped_tasks": tasks}


def _abandoned(
    store: JobStore,
    job_id: str,
    render_id: str,
    worker: dict[str, Any],
    now: float,
    settings: Settings,
) -> bool:
    """A live worker's render that its heartbeat has not listed for ``worker_timeout`` seconds:
    the task that claimed it ended without letting go (it should never happen; if it does,
    the render must not wait forever)."""
    holding = worker.get("holding")
    if holding is None or running_field(job_id, render_id) in holding:
        return False
    state = store.state(job_id, render_id) or {}
    return now - float(state.get("started", now)) > settings.worker_timeout


def reconcile(store: JobStore, app: Celery, settings: Settings) -> dict[str, int]:
    """Re-drive orphaned jobs and re-send lost finalizes."""
    now = store.now()
    suspects, tasks, finalizes = [], 0, 0
    for job_id in store.active():
        info = store.get(job_id)
        if info is None or info.terminal:
            store.r.srem(store.ACTIVE, job_id)
            continue
        if info.status == "finalizing":
            if info.seconds_since("finalizing_since", now) > settings.stall_after:
                store.touch_finalizing(job_id)
                app.send_task(FINALIZE_TASK, args=[job_id])
                finalizes += 1
                log.warning("job %s: finalizing for too long; finalize sent again", job_id)
        elif info.status == "running" and info.pending:
            if info.meta.get("sent") != "1":
                if info.seconds_since("created", now) > settings.stall_after:
                    tasks += recover_job(job_id, store, app, settings, set())
            elif not info.running and info.seconds_since("activity", now) > settings.stall_after:
                suspects.append(job_id)
    if suspects:
        queued = queued_jobs(store)
        for job_id in suspects:
            if job_id in queued:
                store.touch(job_id)  # waiting its turn: look again after another stall_after
            else:
                tasks += recover_job(job_id, store, app, settings, queued)
    return {"tasks": tasks, "finalizes": finalizes}


class Watchdog:
    """Reaps and reconciles every ``watchdog_interval`` seconds, in a daemon thread."""

    def __init__(self, store: JobStore, app: Celery, settings: Settings):
        self.store, self.app, self.settings = store, app, settings
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="stylebatch-watchdog", daemon=True)

    def start(self) -> Watchdog:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def run_once(self) -> dict[str, Any]:
        """One pass, unless another watchdog holds the lock for this interval."""
        interval_ms = max(1, int(self.settings.watchdog_interval * 1000 * 0.9))
        if not self.store.r.set(LOCK, "1", nx=True, px=interval_ms):
            return {}
        return {
            **reap(self.store, self.app, self.settings),
            **reconcile(self.store, self.app, self.settings),
        }

    def _run(self) -> None:
        while not self.stopped.wait(self.settings.watchdog_interval):
            try:
                self.run_once()
            except Exception:  # Redis away for a while: try again next time
                log.exception("watchdog pass failed")
