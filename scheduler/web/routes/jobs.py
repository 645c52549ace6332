"""Jobs: submit a manifest (idempotent, with an optional Idempotency-Key), list a team's jobs
(cursor paging, Link headers), read one, cancel it, retry its failures, its contact sheet."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from common.state import JobInfo
from scheduler import jobview
from scheduler.web import models
from scheduler.web.caching import versioned
from scheduler.web.context import Web
from scheduler.web.deps import TeamDep, base_of, job_of, next_link, owns, rate, web
from scheduler.web.intake import plan_document, plan_record, submit_document
from scheduler.web.problems import READ, WRITE, ApiError, declare

router = APIRouter(tags=["jobs"])
IDEMPOTENCY_PENDING = 120  # seconds a key is held while its request runs
IDEMPOTENCY_KEPT = 24 * 3600  # seconds a key's outcome is kept


def links(info: JobInfo, base: str) -> dict[str, str]:
    return {
        "self": f"{base}/jobs/{info.job_id}",
        "page": f"/ui/jobs/{info.job_id}",
        "renders": f"{base}/jobs/{info.job_id}/renders",
    }


def job_record(store: Any, info: JobInfo, base: str = "/v1") -> dict[str, Any]:
    """A job as the list shows it (models.Job)."""
    record = jobview.job_record(info)
    return record | {"eta_seconds": jobview.eta(info, store.now()), "links": links(info, base)}


def detail(store: Any, info: JobInfo, base: str = "/v1") -> dict[str, Any]:
    """A job as `stylebatch status --json` states it (models.JobDetail)."""
    record = jobview.status_record(store, info) | {"facets": jobview.facets(info)}
    return record | {"links": links(info, base)}


@router.post(
    "/jobs",
    status_code=201,
    summary="Submit a manifest (YAML or JSON body)",
    response_model=models.JobDetail,
    responses={
        200: {
            "description": "The same manifest over the same inputs: the existing job; or, with "
            "validate=true, what the manifest plans (nothing recorded)",
            "content": {
                "application/json": {
                    "schema": {
                        "anyOf": [
                            {"$ref": "#/components/schemas/JobDetail"},
                            {"$ref": "#/components/schemas/Plan"},
                        ]
                    }
                }
            },
        },
        **declare(*WRITE, 422),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/yaml": {"schema": {"type": "string"}},
                "application/json": {"schema": {"type": "object"}},
            },
        }
    },
)
async def post_job(
    request: Request,
    who: TeamDep,
    validate: Annotated[
        bool, Query(description="Check and plan only: nothing is recorded or run")
    ] = False,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=200,
            description="Retries with the same key and body get the first answer again; "
            "the same key with another body is refused (kept 24 h)",
        ),
    ] = None,
) -> Response:
    rate(request, who, "submit")
    body = await request.body()  # at most STYLEBATCH_WEB_MAX_BODY (app.py)
    kind = request.headers.get("content-type", "")
    ctx = web(request)
    if validate:
        job = await run_in_threadpool(plan_document, ctx, who, body, kind)
        return JSONResponse(models.Plan(**plan_record(job)).model_dump(mode="json"))
    digest = hashlib.sha256(body).hexdigest()
    if idempotency_key:
        replay = _begin(ctx, request, who, idempotency_key, digest)
        if replay is not None:
            return replay
    try:
        created, info, job = await run_in_threadpool(submit_document, ctx, who, body, kind)
    except BaseException:
        if idempotency_key:
            ctx.store.idempotency(who.name, idempotency_key, "drop", digest)
        raise
    status = 201 if created else 200
    if idempotency_key:
        kept = (info.job_id, status, IDEMPOTENCY_KEPT)
        ctx.store.idempotency(who.name, idempotency_key, "end", digest, *kept)
    record = await run_in_threadpool(detail, ctx.store, info, base_of(request))
    record["plan"] = plan_record(job)
    return JSONResponse(models.JobDetail(**record).model_dump(mode="json"), status)


def _begin(ctx: Web, request: Request, who: Any, key: str, digest: str) -> Response | None:
    """Claim an Idempotency-Key for this body; the first answer again where it was used."""
    outcome = ctx.store.idempotency(who.name, key, "begin", digest, IDEMPOTENCY_PENDING)
    if outcome[0] == "mismatch":
        raise ApiError(
            "idempotency-key-reused", "this Idempotency-Key came with another body before"
        )
    if outcome[0] == "busy":
        raise ApiError(
            "in-progress", "a request with this Idempotency-Key is running", {"Retry-After": "1"}
        )
    if outcome[0] != "done":
        return None
    info = ctx.store.get(outcome[1])
    if info is None or not owns(who, info):
        raise ApiError("not-found", "the job this Idempotency-Key made is gone")
    record = detail(ctx.store, info, base_of(request))
    headers = {"Idempotent-Replayed": "true"}
    return JSONResponse(
        models.JobDetail(**record).model_dump(mode="json"), int(outcome[2]), headers=headers
    )


SUBMITTERS = ("team", "fleet", "all")


def find_jobs(
    request: Request, who: Any, limit: int, after: str, query: jobview.JobQuery, submitter: str
) -> tuple[list[JobInfo], str | None]:
    """A page of the jobs the team sees, newest first, matching ``query``. ``submitter``:
    ``team`` (its own submissions, the default), ``fleet`` (the command line's and beat's
    jobs that write under its outputs) or ``all``. Bounded per page (jobs_after)."""
    store = web(request).store
    try:
        query.bounds()
    except ValueError:
        raise ApiError("invalid-request", "since and until are dates: YYYY-MM-DD") from None
    if submitter == "team":
        keep = query.matches if query.given() else None
        return store.jobs_after(limit, after, team=who.name, keep=keep)

    def keep(info: JobInfo) -> bool:
        mine = info.meta.get("team") == who.name
        fleet = not info.meta.get("team") and owns(who, info)
        wanted = fleet if submitter == "fleet" else mine or fleet
        return wanted and query.matches(info)

    return store.jobs_after(limit, after, keep=keep)


Search = Annotated[str, Query(max_length=200)]


@router.get(
    "/jobs",
    summary="The team's jobs, newest first: searched and filtered",
    response_model=models.JobPage,
    responses=declare(*READ, 422),
)
def list_jobs(
    request: Request,
    response: Response,
    who: TeamDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    after: Annotated[str, Query(max_length=200, description="`next` of the last page")] = "",
    q: Annotated[str, Query(max_length=200, description="Part of the name or id")] = "",
    status: Annotated[
        str,
        Query(pattern=f"^({'|'.join(jobview.STATUS_FILTERS)})?$",
              description="A status, or an outcome (succeeded, partial)"),
    ] = "",
    submitter: Annotated[
        str,
        Query(pattern="^(team|fleet|all)$",
              description="team (its own submissions), fleet (the command line's and beat's "
              "under its outputs) or all"),
    ] = "team",
    schedule: Annotated[str, Query(max_length=100, description="A schedule's name")] = "",
    since: Annotated[str, Query(max_length=10, description="Made on or after (YYYY-MM-DD)")] = "",
    until: Annotated[str, Query(max_length=10, description="Made on or before (YYYY-MM-DD)")] = "",
) -> dict[str, Any]:  # fmt: skip
    """A page may hold fewer than ``limit`` where few jobs match: follow ``next``."""
    query = jobview.JobQuery(q, status, schedule, since, until)
    found, cursor = find_jobs(request, who, limit, after, query, submitter)
    store = web(request).store
    base = base_of(request)
    extra = query.given() | ({"submitter": submitter} if submitter != "team" else {})
    response.headers.update(next_link(request, cursor, limit=limit, **extra))
    return {"jobs": [job_record(store, i, base) for i in found], "next": cursor}


@router.get(
    "/jobs/{job_id}",
    summary="A job: the facts of `status --json`",
    response_model=models.JobDetail,
    responses=declare(*READ),
)
def get_job(request: Request, who: TeamDep, job_id: str) -> dict[str, Any]:
    info = job_of(request, who, job_id)
    return detail(web(request).store, info, base_of(request))


@router.post(
    "/jobs/{job_id}/cancel",
    summary="Cancel: renders not yet started end cancelled",
    response_model=models.Cancelled,
    responses=declare(*WRITE),
)
def cancel_job(request: Request, who: TeamDep, job_id: str) -> dict[str, Any]:
    info = job_of(request, who, job_id)
    outcome = web(request).store.cancel(info.job_id)
    info = web(request).store.get(info.job_id) or info
    if outcome == "ended":
        said = f"not cancelled: the job has already ended ({info.status})"
    elif outcome == "finalizing":
        said = "not cancelled: every render has ended; the job is being finalized"
    else:
        said = f"cancel requested: {info.pending} render(s) not yet started will be cancelled"
    return {
        "job": info.job_id,
        "cancel_requested": outcome == "requested",
        "status": info.status,
        "detail": said,
    }


@router.post(
    "/jobs/{job_id}/retry",
    summary="Re-drive the failed renders",
    response_model=models.Retried,
    responses=declare(*WRITE),
)
def retry_job(request: Request, who: TeamDep, job_id: str) -> dict[str, Any]:
    from scheduler.submit import retry_failed

    rate(request, who, "submit")
    info = job_of(request, who, job_id)
    ctx = web(request)
    count = retry_failed(info.job_id, ctx.settings, ctx.celery, ctx.store)
    said = f"{count} failed render(s) sent again" if count else "no failed render to retry"
    return {"job": info.job_id, "retried": count, "detail": said}


@router.get(
    "/jobs/{job_id}/contact-sheet",
    summary="The job's contact sheet (PNG, made when the job ends)",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
        304: {"description": "The copy the browser has is current"},
        **declare(*READ),
    },
)
def contact_sheet(request: Request, who: TeamDep, job_id: str) -> Response:
    from common.report import record_key

    info = job_of(request, who, job_id)
    data = web(request).outputs.read(info.location, record_key(info.job_id, "contact_sheet.png"))
    if data is None:
        raise ApiError("not-found", "no contact sheet yet: it is made when the job ends")
    return versioned(request, data, "image/png")
