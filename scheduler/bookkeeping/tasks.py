"""The bookkeeping worker's tasks: finalize, notify, the render task's errback, and the
watchdog it starts. Torch is never imported here."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_ready, worker_shutdown
from celery.utils.log import get_task_logger

from common.dispatch import notify as notify_job
from common.dispatch import settle
from common.errors import StylebatchError, TransientError, never_swallowed
from common.expand import ENGINE_VERSION
from common.leases import renewing
from common.outputs import earlier
from common.queue import (
    BOOKKEEPING_QUEUE,
    FAILED_TASK,
    FINALIZE_TASK,
    NOTIFY_TASK,
    REVIEW_TASK,
    TRANSIENT_RETRIES,
    make_app,
    retry,
    retry_delay,
)
from common.report import COST_KEY, SUMMARY_KEY, publish, record_key
from common.settings import Settings
from common.state import Held, JobStore, NotDurable
from common.storage import open_storage

settings = Settings.from_env()
app = make_app(settings)
log = get_task_logger(__name__)
_store: JobStore | None = None


def store() -> JobStore:
    global _store
    if _store is None:
        _store = JobStore.from_settings(settings)
    return _store


@app.task(name=FAILED_TASK, shared=False)
def render_failed(task_id: str, job_id: str, render_ids: list[str]) -> None:
    """Errback of a render task that died without recording its renders (a hard time limit,
    a killed process). Celery's render worker, which has no such task, sends it here with the
    failed task's id. Only the renders that very task claimed and still holds are touched, so
    a duplicate of it that fails touches nothing a live worker is rendering. A render whose
    output is there with its id (the task died after writing it: a slow S3 answered the PUT
    late) is done, from that fact; the rest fail, with the reason the task's result records
    (its kind and message) where it is still there."""
    if not task_id:
        return
    jobs = store()
    written = _written_by(jobs, task_id, job_id, render_ids)
    for held, spec, prior in written:
        prior.pop("job", None)
        outcome = jobs.finish(held, "done", error=None, rendered_by=job_id,
                              outputs=len(spec.keys), **prior)  # fmt: skip
        settle(app, job_id, outcome)
    rest = [rid for rid in render_ids if rid not in {h.render_id for h, _, _ in written}]
    if not rest:
        return
    reason = "its task died without recording it (a hard time limit, or a lost worker)"
    try:
        result = app.AsyncResult(task_id)
        if result.state == "FAILURE" and isinstance(result.result, BaseException):
            reason = f"{type(result.result).__name__}: {result.result}"
    except Exception as exc:  # the result expired or Redis away: the plain reason will do
        log.warning("render task %s: its error not read (%s)", task_id, exc)
    complete = jobs.fail_task(job_id, task_id, rest, reason)
    settle(app, job_id, complete)


def _written_by(jobs: JobStore, task_id: str, job_id: str, render_ids: list[str]) -> list:
    """(held, spec, what its output says) for each render the task still holds whose output
    is there with its id. S3 unreachable: none (they fail as the task did; a retry renders
    them again, and finds the output there)."""
    info = jobs.get(job_id)
    if info is None:
        return []
    held = []
    for spec in jobs.specs(job_id, render_ids):
        state = jobs.state(job_id, spec.id) or {}
        if state.get("status") == "running" and state.get("task") == task_id:
            held.append((Held(job_id, spec.id, int(state["attempt"]), state["owner"]), spec))
    if not held:
        return []
    try:
        storage = open_storage(info.location, settings)
        found = [(h, spec, earlier(storage, spec)) for h, spec in held]
    except Exception as exc:
        never_swallowed(exc)
        log.warning("job %s: outputs not checked (%s); failing as the task did", job_id, exc)
        return []
    return [(h, spec, prior) for h, spec, prior in found if prior is not None]


FINALIZE_SOFT_LIMIT = 600  # seconds one finalize may take before it stops and resumes later


@app.task(
    name=FINALIZE_TASK,
    bind=True,
    max_retries=None,  # slow or not yet replicated: as long as it takes; S3 away: below
    shared=False,
    soft_time_limit=FINALIZE_SOFT_LIMIT,
    time_limit=FINALIZE_SOFT_LIMIT + 60,
)
def finalize(self, job_id: str) -> dict[str, Any]:
    """Write the job's summary.json, contact sheet and cost table once its last render has
    ended, then end the job. One finalize holds the job's end at a time (a lease with this
    task's id, durable: the renders' ends are on a replica before anything is written), and
    exactly one ends it and sends its webhook; a duplicate or a resend finds the lease.

    Bounded and resumable: each step is recorded in the job as it completes, so a finalize
    stopped by its time limit (a slow store) or retried after S3 went away resumes where it
    stopped; meanwhile the job says so (``finalize_status``: slow, not failed). An
    unreachable store is retried with backoff; after that, or on a permanent error (the
    bucket gone, access denied), the job ends ``failed`` with the reason. Outputs are kept."""
    jobs = store()
    token = self.request.id or jobs.token()
    lease = max(settings.stall_after, 10.0)
    try:
        began = jobs.begin_finalize(job_id, token, lease)
    except NotDurable as exc:  # no replica holds the renders' ends yet: write nothing yet
        _say(job_id, f"waiting for a replica to hold the renders' ends ({exc})")
        raise retry(self, exc, 10) from None
    if began != "ok":
        return {"ignored": f"job is {began or 'gone'}"}
    info = jobs.get(job_id)
    if info is None:
        return {"ignored": "job not found"}
    done = frozenset(s for s in info.meta.get("finalized", "").split(",") if s)

    def mark(step: str) -> None:
        nonlocal done
        done = done | {step}
        jobs.touch_fields(job_id, finalized=",".join(sorted(done)))

    try:
        with renewing(lambda: jobs.begin_finalize(job_id, token, lease), lease / 3):
            summary = jobs.summary(job_id)
            summary.engine = ENGINE_VERSION
            summary.finished = time.time()
            publish(open_storage(info.location, settings), summary, settings, done, mark)
    except SoftTimeLimitExceeded:  # slow, not failed: resume where it stopped
        _say(job_id, f"slow: stopped after {FINALIZE_SOFT_LIMIT} s with {sorted(done)} done; "
                     "resuming")  # fmt: skip
        raise retry(self, None, 5) from None
    except TransientError as exc:
        if self.request.retries < TRANSIENT_RETRIES:
            delay = retry_delay(self.request.retries)
            _say(job_id, f"S3 slow or away: retry {self.request.retries + 1} in {delay:.0f} s "
                         f"({exc})")  # fmt: skip
            raise retry(self, exc, delay) from None
        return _finalize_failed(
            job_id, token, f"summary not written after {TRANSIENT_RETRIES} retries: {exc}"
        )
    except StylebatchError as exc:
        return _finalize_failed(job_id, token, f"summary not written: {exc}")
    except Exception as exc:  # a bug must end the job with a reason, not retry it forever
        log.exception("finalize %s failed", job_id)
        return _finalize_failed(job_id, token, f"summary not written: {type(exc).__name__}: {exc}")
    if not _end_job(job_id, token, "done"):
        return {"ignored": "another finalize ended the job"}
    return {
        "job": job_id,
        "counts": summary.counts(),
        "summary": info.location.uri_of(record_key(job_id, "summary.json")),
    }


def _say(job_id: str, status: str) -> None:
    """What the job's finalize is doing, for `status` and the pages (best effort)."""
    log.warning("finalize %s: %s", job_id, status)
    with contextlib.suppress(Exception):
        store().touch_fields(job_id, finalize_status=status[:300])


def _end_job(job_id: str, token: str, status: str, reason: str = "") -> bool:
    """End the job (once: only the lease holder can) and send its webhook delivery."""
    finished = store().end_job(job_id, status, reason, token)
    if not finished:
        return False
    info = store().get(job_id)
    if info is not None and info.meta.get("webhook"):
        notify_job(app, job_id, info.meta.get("webhook_delivery", ""))
        if info.meta.get("review_webhook_delivery"):  # every output decided while it ran
            notify_job(app, job_id, info.meta["review_webhook_delivery"], "reviewed")
    return True


def _finalize_failed(job_id: str, token: str, reason: str) -> dict[str, Any]:
    log.error("job %s failed: %s", job_id, reason)
    if _end_job(job_id, token, "failed", reason):
        store().count_failure("finalize")
    return {"job": job_id, "failed": reason}


@app.task(name=NOTIFY_TASK, bind=True, max_retries=None, shared=False)
def notify(self, job_id: str, delivery: str, event: str = "ended") -> dict[str, Any]:
    """POST a job's event to its webhook, signed: ``ended`` (job.ended) or ``reviewed``
    (job.reviewed: every output has a review decision); retried with backoff (2, 4, 8 ..
    300 s) up to STYLEBATCH_WEBHOOK_RETRIES times. A delivery is claimed atomically by one
    task (this one, across its retries); a delivery already made is not made again, so a
    receiver sees one id per event, as many times as it had to be retried. Each attempt and
    the outcome are recorded in the job. The result names no URL (it may hold a secret)."""
    from common.notify import check_webhook, payload, post, review_payload, signing_secrets

    jobs = store()
    token = self.request.id or jobs.token()
    hold = 30.0  # seconds this task holds the delivery while it POSTs (a 10 s timeout)
    claimed, attempts = jobs.claim_delivery(job_id, delivery, token, hold, event)
    if claimed == "unreplicated":  # no replica holds the claim (and the end) yet: POST nothing
        log.warning("webhook for job %s: waiting for a replica to hold its claim", job_id)
        raise retry(self, None, 5) from None
    if claimed != "claimed":
        why = {
            "delivered": "delivered already",
            "busy": "another task has it",
            "stale": "the job is gone, runs again or has ended again since",
        }
        return {"ignored": why[claimed]}
    info = jobs.get(job_id)
    if info is None:
        return {"ignored": "the job is gone"}
    field = "webhook_delivery" if event == "ended" else "review_webhook_delivery"
    if not info.terminal or info.meta.get(field) != delivery:  # re-opened since the claim
        return {"ignored": "the job runs again or has ended again since"}
    url = info.meta.get("webhook", "")
    team = info.meta.get("team", "")

    def outcome(status: str, how: str, hold: float = 0) -> None:
        jobs.delivery_outcome(job_id, delivery, token, status, how, hold, event)

    refused = check_webhook(url, settings, team)  # checked at submit; checked again here
    if refused:
        status = f"refused: {refused[0].message}"
        outcome(status, "refused")
        return {"refused": status}
    summary = info.location.uri_of(record_key(job_id, "summary.json"))
    if event == "reviewed":
        delivery_id, body = review_payload(info, delivery, summary)
    else:
        failed = [
            {"render": r.id, "content": r.content_name, "style": r.style, "size": r.size,
             "error": (jobs.state(job_id, r.id) or {}).get("error")}
            for r in jobs.specs(job_id, jobs.failed(job_id, 20))
        ]  # fmt: skip
        delivery_id, body = payload(info, failed, summary)
    error = post(url, body, delivery_id, signing_secrets(settings, team))
    if error is None:
        outcome("delivered", "delivered")
        return {"delivered": delivery, "attempts": attempts}
    if self.request.retries < settings.webhook_retries:
        delay = min(300.0, settings.webhook_backoff * 2**self.request.retries)
        outcome(f"retrying in {delay:g} s: {error}", "retrying", delay + 30)
        raise retry(self, None, delay)
    status = f"failed after {attempts} attempts: {error}"
    outcome(status, "failed")
    log.error("webhook %s for job %s %s", event, job_id, status)
    return {"failed": status}


@app.task(name=REVIEW_TASK, bind=True, max_retries=None, shared=False)
def review_published(self, job_id: str, taken: bool = False) -> dict[str, Any]:
    """An ended job's summary.json and cost.csv written again with its review decisions
    (whole objects: writing them again is safe). Taken by one task at a time (review.lua asks
    for it after a decision; review_publish.lua hands it over); a finalizing job's is asked
    for again shortly, a running job's finalize writes the decisions itself. The top-level
    summary.json is written only while it is this job's (a later job's stays). S3 away: the
    task is retried, still holding it (``taken``).

    Then, where every output of the job has a decision and its job.reviewed is owed, that
    delivery is sent: after the summary it points to has the decisions. (The watchdog sends
    this task again for a job.reviewed owed too long: its first was lost.)"""
    jobs = store()
    outcome = "publish" if taken else jobs.take_review_publish(job_id)
    if outcome == "wait":
        raise retry(self, None, 10) from None
    info = jobs.get(job_id) if outcome == "publish" else None
    if info is None:
        _reviewed_owed(jobs, job_id)
        return {"ignored": "nothing to publish"}
    summary = jobs.summary(job_id)
    summary.engine = ENGINE_VERSION
    storage = open_storage(info.location, settings)
    try:
        data, meta = summary.to_json(), {"job": job_id}
        storage.put(record_key(job_id, SUMMARY_KEY), data, "application/json", meta)
        if _latest_summary_is(storage, job_id):
            storage.put(SUMMARY_KEY, data, "application/json", meta)
        storage.put(record_key(job_id, COST_KEY), summary.cost_csv(), "text/csv", meta)
    except TransientError as exc:
        if self.request.retries >= TRANSIENT_RETRIES:
            raise
        delay = retry_delay(self.request.retries)
        raise retry(self, exc, delay, kwargs={"taken": True}) from None
    _reviewed_owed(jobs, job_id)
    return {"job": job_id, "review": summary.review()}


def _reviewed_owed(jobs: JobStore, job_id: str) -> None:
    """Send the job's job.reviewed delivery if it is owed and not yet made."""
    info = jobs.get(job_id)
    meta = info.meta if info else {}
    delivery = meta.get("review_webhook_delivery")
    if delivery and meta.get("review_webhook_delivered") != delivery:
        notify_job(app, job_id, delivery, "reviewed")


def _latest_summary_is(storage: Any, job_id: str) -> bool:
    """Whether the top-level summary.json is this job's (its object metadata on S3; its
    ``job_id`` on a local folder)."""
    import json

    meta = storage.metadata(SUMMARY_KEY)
    if meta and "job" in meta:
        return meta["job"] == job_id
    raw = storage.get(SUMMARY_KEY)
    try:
        return raw is not None and json.loads(raw).get("job_id") == job_id
    except ValueError:
        return False


_watchdog: Any = None


@worker_ready.connect
def _start_watchdog(sender: Any = None, **_: Any) -> None:
    """The bookkeeping worker reaps dead workers' renders and reconciles stalled jobs."""
    global _watchdog
    queues = {q.name for q in sender.task_consumer.queues} if sender is not None else set()
    if BOOKKEEPING_QUEUE in queues and _watchdog is None:
        from scheduler.bookkeeping.watchdog import Watchdog

        _watchdog = Watchdog(store(), app, settings).start()


@worker_shutdown.connect
def _stop_watchdog(**_: Any) -> None:
    if _watchdog is not None:
        _watchdog.stop()
