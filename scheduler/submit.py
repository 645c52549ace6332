"""Submitting a job: record it in Redis (whole, or not at all), then enqueue its renders as
tasks, sent by name. A plan followed from here goes down only, to common/dispatch.py and
common/state.py."""

from __future__ import annotations

import time
from dataclasses import dataclass

from celery import Celery

from common.dispatch import enqueue, finalize, recover_job
from common.expand import JobPlan
from common.leases import renewing
from common.schedule import slot_label
from common.settings import Settings
from common.state import SUBMIT_LEASE, JobStore


@dataclass
class Submitted:
    job_id: str
    created: bool
    renders: int
    tasks: int
    seconds: float
    in_progress: bool = False  # another submit of the same job holds it, creating or enqueueing
    wait: float = 0.0  # then: seconds until its lease lapses, were that submit dead


def submit(
    plan: JobPlan,
    settings: Settings,
    app: Celery,
    store: JobStore,
    force: bool = False,
    team: str = "",
) -> Submitted:
    """Record and enqueue a job. Submitting an existing job again enqueues what it lacks: the
    pending renders of a job whose first submit died before all its tasks were sent, or that
    have no queued or running task (common/dispatch.py); otherwise nothing. ``team``: the web
    team submitting it (scheduler/web), recorded with the job."""
    started = time.perf_counter()
    if plan.slot is not None and not force:
        holder = store.claim_slot(plan.name, slot_label(plan.slot), plan.job_id)
        if holder is not None and holder != plan.job_id:
            return Submitted(holder, False, len(plan.renders), 0, 0.0)
    # One submit at a time creates and enqueues a job: a racing one (the same manifest posted
    # twice at once) neither stages over it nor re-drives the renders it is still sending.
    # The lease is short and renewed while this submit lives, so a submit killed holding it
    # lets go within SUBMIT_LEASE seconds, and the next one recovers the job.
    token = store.token()
    if not store.hold_submit(plan.job_id, token):
        wait = store.lease_left(f"submit:{plan.job_id}")
        return Submitted(plan.job_id, False, len(plan.renders), 0, 0.0, True, wait)
    try:
        with renewing(lambda: store.hold_submit(plan.job_id, token), SUBMIT_LEASE / 3):
            if not store.create(plan, force, team):
                tasks = recover_job(plan.job_id, store, app, settings)
                return Submitted(plan.job_id, False, len(plan.renders), tasks, 0.0)
            tasks = enqueue(app, plan.job_id, plan.renders, plan.manifest.priority, settings)
            store.mark_sent(plan.job_id)
    finally:
        store.release_submit(plan.job_id, token)
    if not plan.renders:
        finalize(app, plan.job_id)
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
