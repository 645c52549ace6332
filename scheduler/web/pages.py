"""The pages, rendered here (Jinja2, autoescaped: nothing read from job state reaches the
browser as HTML), with a little plain JavaScript for live progress and no build step. They
read through the same functions as the API (scheduler/web/routes, scheduler/jobview.py).

Every form carries the session's anti-forgery value (scheduler/web/deps.py); every action
shows its result on the next page (``sessions.flash``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from scheduler import jobview
from scheduler.web.deps import TeamDep, job_of, web
from scheduler.web.intake import plan_document, plan_record, submit_document
from scheduler.web.problems import ApiError
from scheduler.web.routes import jobs as jobs_api
from scheduler.web.routes.schedules import schedules_of
from scheduler.web.templating import flash, page

router = APIRouter(prefix="/ui", include_in_schema=False)
GALLERY_PAGE = 48
JOBS_PAGE = 20


def jobs_listed(
    request: Request,
    who: Any,
    after: str = "",
    query: jobview.JobQuery | None = None,
    submitter: str = "team",
) -> tuple[list[dict], str | None]:
    store = web(request).store
    query = query or jobview.JobQuery()
    found, cursor = jobs_api.find_jobs(request, who, JOBS_PAGE, after, query, submitter)
    return [jobs_api.job_record(store, i) for i in found], cursor


Short = Annotated[str, Query(max_length=200)]


@router.get("")
def jobs_page(
    request: Request,
    who: TeamDep,
    after: Short = "",
    q: Short = "",
    status: Short = "",
    submitter: Short = "team",
    schedule: Short = "",
    since: Short = "",
    until: Short = "",
) -> HTMLResponse:
    """The jobs list, searched (name or id) and filtered (status or outcome, submitter,
    schedule, dates), newest first, with created and ended times."""
    if status and status not in jobview.STATUS_FILTERS:
        raise ApiError("invalid-request", f"no such status: {status[:40]}")
    if submitter not in jobs_api.SUBMITTERS:
        raise ApiError("invalid-request", "submitter is team, fleet or all")
    query = jobview.JobQuery(q, status, schedule, since, until)
    jobs, cursor = jobs_listed(request, who, after, query, submitter)
    search = query.given() | ({"submitter": submitter} if submitter != "team" else {})
    next_link = f"?{urlencode({**search, 'after': cursor})}" if cursor else None
    return page(
        request, "jobs.html", team=who, jobs=jobs, next=next_link, first=bool(after),
        search=search, statuses=jobview.STATUS_FILTERS,
        schedules=[s["name"] for s in _schedules(request, who)],
    )  # fmt: skip


def _older(cursor: str | None) -> str | None:
    return f"?{urlencode({'after': cursor})}" if cursor else None


def _schedules(request: Request, who: Any) -> list[dict]:
    """The team's scheduled manifests for the filter (none where they cannot be read now)."""
    try:
        return schedules_of(web(request), who, slots=0)
    except Exception:
        return []


@router.post("/jobs")
async def submit_page(request: Request, who: TeamDep) -> Response:
    """The submit form: ``action`` "check" plans it and shows what it comes to; "submit"
    submits it. Refusals are shown on the form, problem by problem."""
    form = await request.form()
    text = str(form.get("manifest", ""))  # at most STYLEBATCH_WEB_MAX_BODY (app.py)
    checking = form.get("action") == "check"
    ctx = web(request)
    try:
        jobs_api.rate(request, who, "submit")
        body = text.encode()  # read as JSON where it opens with "{", else as YAML
        if checking:
            job = await run_in_threadpool(plan_document, ctx, who, body)
            jobs, cursor = jobs_listed(request, who)
            return page(
                request, "jobs.html", team=who, jobs=jobs, next=_older(cursor), manifest=text,
                plan=plan_record(job),
            )  # fmt: skip
        created, info, job = await run_in_threadpool(submit_document, ctx, who, body)
    except ApiError as exc:
        if exc.code == "rate-limited":
            raise
        jobs, cursor = jobs_listed(request, who)
        refused = {"detail": exc.detail, "problems": exc.extra.get("problems") or []}
        return page(
            request, "jobs.html", status=exc.status, team=who, jobs=jobs, next=_older(cursor),
            problems=refused, manifest=text,
        )  # fmt: skip
    said = plan_record(job)
    message = (
        f"{'submitted' if created else 'already submitted'}: {said['renders']} render(s), "
        f"{said['outputs']} output(s)"
    )
    if said["notes"]:
        message += "; " + "; ".join(said["notes"])
    response = RedirectResponse(f"/ui/jobs/{info.job_id}", status_code=303)
    return flash(response, message)


@router.get("/jobs/{job_id}")
def job_page(request: Request, who: TeamDep, job_id: str) -> HTMLResponse:
    info = job_of(request, who, job_id)
    record = jobs_api.detail(web(request).store, info)
    ended = info.total - record["pending"] - record["running"]
    return page(request, "job.html", team=who, job=record, ended=ended, facets=record["facets"])


ACTIONS = {"cancel": jobs_api.cancel_job, "retry": jobs_api.retry_job}


@router.post("/jobs/{job_id}/{action}")
def action_page(
    request: Request, who: TeamDep, job_id: str, action: Literal["cancel", "retry"]
) -> Response:
    """The job page's buttons: the API's cancel or retry, then back to the job, which shows
    what came of it."""
    result = ACTIONS[action](request, who, job_id)
    response = RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)
    return flash(response, result["detail"])


@router.get("/jobs/{job_id}/contact-sheet")
def sheet_page(request: Request, who: TeamDep, job_id: str) -> HTMLResponse:
    info = job_of(request, who, job_id)
    return page(request, "sheet.html", team=who, job=jobview.job_record(info))


@router.get("/schedules")
def schedules_page(request: Request, who: TeamDep) -> HTMLResponse:
    found = schedules_of(web(request), who)
    return page(request, "schedules.html", team=who, schedules=found)
