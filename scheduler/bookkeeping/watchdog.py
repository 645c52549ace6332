"""The watchdog, in the bookkeeping worker: nothing stuck, nothing counted twice.

- **Reaping.** A worker process that has not beaten for ``worker_timeout`` seconds is
  presumed dead: each render it held counts one crash and goes back to pending (failed at the
  crash cap) and is enqueued again. If the process was only paused and its heartbeat resumes,
  the crash is taken back and its late results are refused (common/state.py: fencing). A
  slow render is never reaped: its process beats from a thread.
- **Reconciling.** A job whose submit died before all its tasks were sent (for
  ``stall_after`` seconds), or a running job with pending renders, nothing running, no
  activity for ``stall_after`` seconds and no task in the broker's queues, has its pending
  renders enqueued again. A job finalizing for ``stall_after`` seconds has its finalize sent
  again (a lost message, or a bookkeeping worker killed mid-finalize), and a job end whose
  webhook is still owed with no notify task holding it has its delivery sent again.
- A pass runs only under the fleet-wide ``watchdog`` lease, with a token, renewed before each
  step: two bookkeeping workers never run passes at once, and a pass that outlives its
  lease stops at its next step.

The broker's visibility timeout stays as the last backstop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from typing import Any

from celery import Celery

from common.dispatch import (
    finalize,
    notify,
    queued_jobs,
    recover_job,
    redrive,
    review_published,
    settle,
)
from common.queue import MAX_CRASHES
from common.settings import Settings
from common.state import JobStore, NotDurable, running_field

log = logging.getLogger("stylebatch.watchdog")
LEASE = "watchdog"


class LeaseLost(Exception):
    """Another watchdog holds the lease now: this pass stops."""


def reap(store: JobStore, app: Celery, settings: Settings, renew: Any = None) -> dict[str, int]:
    """Re-drive the renders of worker processes whose heartbeat is gone."""
    silent = set(store.silent_owners(settings.worker_timeout))
    known = store.beating()
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
        if renew is not None:
            renew()
        claim = store.reap(job_id, render_id, owner, MAX_CRASHES)
        if claim.outcome == "requeued":
            reaped += 1
            again[job_id].append(render_id)
            log.warning(
                "render %s of job %s: worker %s is silent; re-driven", render_id, job_id, owner
            )
        elif claim.outcome == "gave_up":
            gave_up += 1
            settle(app, job_id, claim.complete)
    tasks = sum(redrive(job, ids, store, app, settings) for job, ids in again.items())
    threshold = store.now() - settings.worker_timeout
    for owner in silent - holding:
        store.forget(owner, silent_before=threshold)  # unless it came back meanwhile
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
    the task that claimed it ended without letting go (a Redis error mid-release, say), so the
    render must not wait forever."""
    holding = worker.get("holding")
    if holding is None or running_field(job_id, render_id) in holding:
        return False
    state = store.state(job_id, render_id) or {}
    return now - float(state.get("started", now)) > settings.worker_timeout


def reconcile(
    store: JobStore, app: Celery, settings: Settings, renew: Any = None
) -> dict[str, int]:
    """Re-drive orphaned jobs and re-send lost finalizes."""
    now = store.now()
    suspects, tasks, finalizes = [], 0, 0
    for job_id in store.active():
        if renew is not None:
            renew()
        info = store.get(job_id)
        if info is None or info.terminal:
            store.drop_active(job_id)
            continue
        if info.status == "finalizing":
            lease_over = float(info.meta.get("finalize_until") or 0) < now
            if info.seconds_since("finalizing_since", now) > settings.stall_after and lease_over:
                store.touch_finalizing(job_id)
                finalize(app, job_id)
                finalizes += 1
                log.warning("job %s: finalizing for too long; finalize sent again", job_id)
        elif info.status == "running" and info.pending:
            if info.meta.get("sent") != "1":
                if info.seconds_since("created", now) > settings.stall_after:
                    try:
                        tasks += recover_job(job_id, store, app, settings, set())
                    except NotDurable as exc:  # not on a replica yet: next pass
                        log.warning("job %s not re-driven yet: %s", job_id, exc)
            elif not info.running and info.seconds_since("activity", now) > settings.stall_after:
                suspects.append(job_id)
    webhooks = 0
    for job_id, delivery, event in store.owed_webhooks(settings.stall_after):
        if event == "reviewed":  # its summary first, then the delivery (review_published)
            review_published(app, job_id)
        else:
            notify(app, job_id, delivery, event)  # its notify was lost, or died holding it
        webhooks += 1
        log.warning("job %s: webhook delivery %s owed; sent again", job_id, delivery)
    if suspects:
        queued = queued_jobs(store)
        for job_id in suspects:
            if job_id in queued:
                store.touch(job_id)  # waiting its turn: look again after another stall_after
            else:
                tasks += recover_job(job_id, store, app, settings, queued)
    return {"tasks": tasks, "finalizes": finalizes, "webhooks": webhooks}


class Watchdog:
    """Reaps and reconciles every ``watchdog_interval`` seconds, in a daemon thread, while it
    holds the fleet-wide lease."""

    def __init__(self, store: JobStore, app: Celery, settings: Settings):
        self.store, self.app, self.settings = store, app, settings
        self.token = store.token()
        self._renewed = 0.0  # monotonic time the lease was last taken or renewed
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="stylebatch-watchdog", daemon=True)

    @property
    def lease_seconds(self) -> float:
        return max(3 * self.settings.watchdog_interval, 5.0)

    def start(self) -> Watchdog:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        try:
            self.store.let_go(LEASE, self.token)
        except Exception as exc:  # Redis away: the lease expires by itself
            log.warning("watchdog lease not let go: %s", exc)

    def renew(self) -> None:
        """Called before every step of a pass; asks Redis only once a third of the lease has
        gone by (a pass over many jobs costs no Redis call per job)."""
        if self.stopped.is_set():
            raise LeaseLost
        now = time.monotonic()
        if now - self._renewed < self.lease_seconds / 3:
            return
        if not self.store.lease(LEASE, self.token, self.lease_seconds):
            raise LeaseLost
        self._renewed = now

    def run_once(self) -> dict[str, Any]:
        """One pass, if this watchdog holds (or can take) the lease."""
        if not self.store.lease(LEASE, self.token, self.lease_seconds):
            return {}
        self._renewed = time.monotonic()
        try:
            return {
                **reap(self.store, self.app, self.settings, self.renew),
                **reconcile(self.store, self.app, self.settings, self.renew),
            }
        except LeaseLost:
            log.warning("watchdog lease lost mid-pass; another watchdog goes on")
            return {}

    def _run(self) -> None:
        while not self.stopped.wait(self.settings.watchdog_interval):
            try:
                self.run_once()
            except Exception:  # Redis away for a while: try again next time
                log.exception("watchdog pass failed")
