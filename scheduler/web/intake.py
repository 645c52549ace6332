"""A team's manifest into the one intake path (scheduler/intake.py), as the API and the
page's form both send it: read, checked with the team's prefixes, then submitted.

One team's manifest must not slow another team's requests. Reading and planning a manifest
(parsing, listing its globs within their bounds, identifying inputs) is CPU work that would
hold the server's interpreter lock, so it runs in planner processes of their own
(STYLEBATCH_WEB_PLANNERS, spawned once): the server's event loop only waits for their
answer. At most SUBMITS_AT_ONCE manifests of one team are read or planned at once (others
wait their turn, then get 429), so a team cannot take every planner from the others."""

from __future__ import annotations

import threading
import time
from typing import Any

from common.state import JobInfo, NotDurable
from common.teams import Team
from scheduler.web.context import Web
from scheduler.web.deps import owns
from scheduler.web.planners import submitter
from scheduler.web.problems import ApiError, Unavailable

IN_PROGRESS_WAIT = 10.0  # seconds a submit waits for a racing one to record the same job
SUBMITS_AT_ONCE = 1
SUBMIT_WAIT = 30.0  # seconds a submit waits for its team's turn


def plan_document(ctx: Web, who: Team, body: bytes, content_type: str = "") -> Any:
    """Read, plan and check, nothing recorded (``?validate=true``, the page's check button,
    and the first half of a submit)."""
    with _one_of_few(ctx, who):
        answer = ctx.planners.run(ctx.settings, who, body, content_type)
    if answer[0] == "ok":
        return answer[1]
    _, code, detail, problems, service = answer
    if service:
        raise Unavailable(service, detail)
    raise ApiError(code, detail, problems=problems)


def submit_document(
    ctx: Web, who: Team, body: bytes, content_type: str = ""
) -> tuple[bool, JobInfo, Any]:
    """What `stylebatch submit` does, with the team's prefixes. Returns (created, the job,
    the plan)."""
    from scheduler import intake

    job = plan_document(ctx, who, body, content_type)
    theirs = "this manifest's job was submitted by someone else"
    existing = ctx.store.get(job.job_id)
    if existing is not None and not owns(who, existing):
        raise ApiError("conflict", theirs)
    with _one_of_few(ctx, who):
        try:
            result = intake.submit(job, submitter(ctx.settings, who), ctx.celery, ctx.store)
        except NotDurable as exc:  # recorded, no replica holds it yet: nothing was sent
            raise Unavailable("Redis", f"{exc} (no replica in step)") from None
    info = ctx.store.get(result.job_id)
    deadline = time.monotonic() + IN_PROGRESS_WAIT
    while info is None and result.in_progress and time.monotonic() < deadline:
        time.sleep(0.1)  # another request of the same manifest is recording it now
        info = ctx.store.get(result.job_id)
    if info is None:
        raise ApiError(
            "in-progress",
            "this job is being submitted by another request; try again",
            {"Retry-After": "1"},
        )
    if not result.created and not owns(who, info):  # another team's, made meanwhile
        raise ApiError("conflict", theirs)
    return result.created, info, job


class _one_of_few:
    """At most SUBMITS_AT_ONCE submits of a team at once in this process; another waits its
    turn up to SUBMIT_WAIT seconds, then gets 429."""

    def __init__(self, ctx: Web, who: Team):
        self.ctx, self.name = ctx, who.name

    def __enter__(self) -> None:
        with self.ctx.lock:
            turn = self.ctx.submitting.setdefault(
                self.name, threading.BoundedSemaphore(SUBMITS_AT_ONCE)
            )
        if not turn.acquire(timeout=SUBMIT_WAIT):
            raise ApiError(
                "rate-limited",
                f"{SUBMITS_AT_ONCE} submits of team {self.name} are running; retry in a moment",
                {"Retry-After": "5"},
            )
        self.turn = turn

    def __exit__(self, *exc: Any) -> None:
        self.turn.release()


def plan_record(job: Any) -> dict[str, Any]:
    """What a plan comes to, before anything runs: renders, the outputs they write (copies
    included), and what was collapsed (docs/campaigns.md)."""
    copies = sum(len(r.copies) for r in job.renders)
    styles = {r.style for r in job.renders} | {s for r in job.renders for s, _ in r.copies}
    notes = []
    if copies:
        notes.append(
            f"{copies} output(s) are copies: style names that resolve to the same render share "
            "it, and its output is written to each of their keys"
        )
    if job.duplicates:
        notes.append(
            f"{job.duplicates} duplicate entr(y/ies) collapsed: the same render at the same key"
        )
    return {
        "job": job.job_id,
        "renders": len(job.renders),
        "outputs": len(job.renders) + copies,
        "copies": copies,
        "collapsed": job.duplicates,
        "contents": len({r.content for r in job.renders}),
        "styles": len(styles),
        "notes": notes,
    }
