"""Sending work: render tasks for a job's renders (grouped into batches), re-drives of what a
job lacks, and finalize, whose one sender is ``finalize`` here. Tasks are sent by name, so
nothing here imports the workers (or torch). Used by submit, retry, the render tasks and the
watchdog alike; it reads and changes state only through common/state.py and reads the broker
only through common/broker.py."""

from __future__ import annotations

import logging
import time

from celery import Celery, Signature

from common import broker
from common.batching import batches
from common.expand import Render
from common.queue import (
    FAILED_TASK,
    FINALIZE_TASK,
    NOTIFY_TASK,
    RENDER_QUEUE,
    RENDER_TASK,
    REVIEW_TASK,
    celery_priority,
    task_work,
)
from common.settings import Settings
from common.sizes import parse_size
from common.state import JobStore

log = logging.getLogger("stylebatch.dispatch")


def finalize(app: Celery, job_id: str) -> None:
    """Send a job's finalize. Due when a transition reports that it ended the job's last
    render (``complete``; decided in common/lua/prelude.lua), or when the watchdog finds a
    finalize lost; a duplicate is harmless (begin_finalize leases the job's end)."""
    app.send_task(FINALIZE_TASK, args=[job_id])


def notify(app: Celery, job_id: str, delivery: str, event: str = "ended") -> None:
    """Send a webhook delivery (``event``: the job ``ended``, or its review is complete,
    ``reviewed``): once by what caused it, again by the watchdog while it is owed and no
    notify task holds it."""
    app.send_task(NOTIFY_TASK, args=[job_id, delivery, event])


def review_published(app: Celery, job_id: str, countdown: float = 3) -> None:
    """Write the job's summary and cost table again with its review decisions, a few seconds
    after a decision (decisions in the meantime are written by the same task)."""
    app.send_task(REVIEW_TASK, args=[job_id], countdown=countdown)


def settle(app: Celery, job_id: str, outcome: str | bool) -> None:
    """Act on a transition's outcome: finalize once it completed the job."""
    if outcome in ("complete", True):
        finalize(app, job_id)


def task_groups(renders: list[Render]) -> list[list[Render]]:
    """A job's renders as tasks: the one batching rule (common/batching.py), sizes as the
    manifest gives them (a long side counts as a square, the most it can be)."""
    return batches(renders, lambda r: parse_size(r.size).pixels)


def enqueue(
    app: Celery, job_id: str, renders: list[Render], priority: int, settings: Settings
) -> int:
    """Send one task per group; returns the number of tasks. The worker that takes a task sets
    its time limits for its own device, from the task's ``work``. Messages and their task-sent
    events are buffered into Redis pipelines (kombu's publish batches): one round trip per
    thousand messages instead of two per task."""
    groups = task_groups(renders)
    with (
        app.producer_or_acquire() as producer,
        app.events.Dispatcher(channel=producer.channel, enabled=True) as events,
        producer.batch(1000),
        events.producer.batch(1000),
    ):
        for group in groups:
            first = group[0]
            ids = [r.id for r in group]
            styles = ",".join(r.style for r in group)
            app.send_task(
                RENDER_TASK,
                kwargs={
                    "job_id": job_id,
                    "render_ids": ids,
                    "size": first.size,
                    "styles": [r.style for r in group],
                    "content": first.content_name,
                    "work": task_work(first.size, first.params, len(group)),
                },
                queue=RENDER_QUEUE,
                priority=celery_priority(priority),
                headers={"sent_at": time.time()},  # the age of a queue's oldest message
                link_error=Signature(FAILED_TASK, args=(job_id, ids), app=app),
                producer=producer,
                event_dispatcher=events,
                # nothing reads a render task's result (its outcome is in the job state):
                # none is stored, and the sender subscribes to none (two Redis commands a
                # task, half of a 100,000-render submit's time)
                ignore_result=True,
                # what Flower shows; given here, Celery skips its slow generic repr
                argsrepr="()",
                kwargsrepr=(
                    f"job={job_id} size={first.size} content={first.content_name} "
                    f"styles={styles} renders={','.join(i[:12] for i in ids)}"
                ),
            )
    return len(groups)


def redrive(
    job_id: str, render_ids: list[str], store: JobStore, app: Celery, settings: Settings
) -> int:
    """Enqueue new tasks for the renders of a job that are still pending; returns tasks."""
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
    """Jobs with a render task waiting in the broker or delivered and not yet acknowledged."""
    return broker.queued_jobs(store.read, RENDER_QUEUE)


def recover_job(
    job_id: str, store: JobStore, app: Celery, settings: Settings, queued: set[str] | None = None
) -> int:
    """Enqueue what an existing job lacks (a resubmit, or the reconciler); returns tasks. A
    job whose submit died before all its tasks were sent has every pending render sent
    again; otherwise, pending renders with nothing running and no task in the broker."""
    info = store.get(job_id)
    if info is None:
        return 0
    if info.status == "finalizing" and info.meta.get("sent") != "1":  # a job of no renders
        store.mark_sent(job_id)
        finalize(app, job_id)
        return 0
    if info.status != "running" or info.pending == 0:
        return 0
    if info.meta.get("sent") != "1":
        # Its create may never have reached a replica (its submit died, or was told
        # NotDurable): nothing is sent for it until one holds it (NotDurable otherwise).
        store.confirm_durable(job_id)
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
