"""Submitting a job: record it in Redis, then enqueue its renders as tasks, sent by name."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from celery import Celery, Signature

from common.expand import JobPlan, Render
from common.jobs import JobStore
from common.queue import (
    FAILED_TASK,
    MAX_BATCH_PIXELS,
    RENDER_QUEUE,
    RENDER_TASK,
    celery_priority,
    task_work,
)
from common.schedule import slot_label
from common.settings import Settings
from common.sizes import parse_size


@dataclass
class Submitted:
    job_id: str
    created: bool
    renders: int
    tasks: int
    seconds: float


def task_groups(renders: list[Render]) -> list[list[Render]]:
    """Renders a worker can optimise as one batch: one content, one size, one parameter set
    (so one output shape), up to the batch pixel budget."""
    groups: dict[str, list[Render]] = {}
    for render in renders:
        key = json.dumps(
            [
                render.content,
                render.identities.get(render.content, ""),
                render.size,
                render.params,
                render.weights,
            ],
            sort_keys=True,
        )
        groups.setdefault(key, []).append(render)
    out = []
    for group in groups.values():
        per_task = max(1, MAX_BATCH_PIXELS // parse_size(group[0].size).pixels)
        out += [group[i : i + per_task] for i in range(0, len(group), per_task)]
    return out


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
                # what Flower shows; given here, Celery skips its slow generic repr
                argsrepr="()",
                kwargsrepr=(
                    f"job={job_id} size={first.size} content={first.content_name} "
                    f"styles={styles} renders={','.join(i[:12] for i in ids)}"
                ),
            )
    return len(groups)


def submit(
    plan: JobPlan, settings: Settings, app: Celery, store: JobStore, force: bool = False
) -> Submitted:
    """Record and enqueue a job. Submitting an existing job again enqueues what it lacks: the
    pending renders of a job whose first submit died before all its tasks were sent, or that
    have no queued or running task (see scheduler/recovery.py); otherwise nothing."""
    from scheduler.recovery import recover_job

    started = time.perf_counter()
    if plan.slot is not None and not force:
        holder = store.claim_slot(plan.name, slot_label(plan.slot), plan.job_id)
        if holder is not None and holder != plan.job_id:
            return Submitted(holder, False, len(plan.renders), 0, 0.0)
    if not store.create(plan, force):
        tasks = recover_job(plan.job_id, store, app, settings)
        return Submitted(plan.job_id, False, len(plan.renders), tasks, 0.0)
    tasks = enqueue(app, plan.job_id, plan.renders, plan.manifest.priority, settings)
    store.mark_sent(plan.job_id)
    if not plan.renders:
        store.mark_finished(plan.job_id)
    return Submitted(plan.job_id, True, len(plan.renders), tasks, time.perf_counter() - started)


def retry_failed(job_id: str, settings: Settings, app: Celery, store: JobStore) -> int:
    """Re-drive only the failed renders of a job."""
    info = store.get(job_id)
    if info is None:
        raise KeyError(job_id)
    ids = store.reset_failed(job_id)
    if ids:
        enqueue(app, job_id, store.specs(job_id, ids), int(info.meta["priority"]), settings)
    return len(ids)
