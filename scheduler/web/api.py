"""The JSON API (docs/web.md): submit and steer jobs, read their renders and schedules. Each
answer reads the job's record and one page of its renders, never the whole job."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import redis
import yaml
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse

from common.errors import ManifestError, Problem, TransientError
from common.state import TERMINAL, JobInfo
from scheduler import jobview
from scheduler.web.core import Team, Unavailable, Web, facets, job_of, owns, team, web

router = APIRouter()
TeamDep = Annotated[Team, Depends(team)]
BASE = Path("/nonexistent-web-manifest")  # a posted manifest's relative paths lead nowhere
STATES = ("pending", "running", *TERMINAL)
Status = Enum("Status", {s: s for s in STATES}, type=str)
IMAGE_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
IN_PROGRESS_WAIT = 10.0  # seconds a submit waits for a racing one to record the same job
BUSY = {"Retry-After": "1"}


class Invalid(Exception):
    """A manifest refused: 422 with every problem and its path, as `validate` prints them."""

    def __init__(self, title: str, problems: list[Problem]):
        super().__init__(title)
        self.title, self.problems = title, problems

    def body(self) -> dict[str, Any]:
        return {
            "detail": self.title,
            "problems": [{"where": p.where, "message": p.message} for p in self.problems],
        }


def parse_body(body: bytes, content_type: str = "") -> dict[str, Any]:
    """A manifest posted as YAML or JSON: read as JSON (``json.loads``, not as YAML, which
    refuses JSON's tab indents and reads ``4e1`` as a string) when it is sent as JSON or
    opens with ``{``; as YAML otherwise, and where a ``{`` body is not JSON (a YAML flow
    mapping). Nesting too deep to read is refused, not a crash."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid("invalid manifest", [Problem("", "not UTF-8 text")]) from None
    as_json = "json" in content_type.lower()
    try:
        data = _load(text, as_json)
    except RecursionError:
        raise Invalid("invalid manifest", [Problem("", "nested too deeply")]) from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}"
        raise Invalid("invalid manifest", [Problem(where, f"invalid JSON: {exc}")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        raise Invalid("invalid manifest", [Problem(where, f"invalid YAML: {exc}")]) from None
    if not isinstance(data, dict):
        raise Invalid("invalid manifest", [Problem("", "a manifest must be a mapping at the top")])
    return data


def _load(text: str, as_json: bool) -> Any:
    if as_json:
        return json.loads(text)
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass  # a YAML flow mapping, then
    return yaml.safe_load(text)


def submit_document(ctx: Web, who: Team, data: dict[str, Any]) -> tuple[bool, JobInfo]:
    """What `stylebatch submit` does, with the team's prefixes: validate and expand,
    confine the output, preflight, then record and enqueue (or find the job it already is).
    Returns (created, the job)."""
    from common.access import OutputRefused, check_output
    from common.expand import plan_document
    from common.inputs import CannotCheck
    from scheduler.preflight import preflight
    from scheduler.submit import submit

    settings = who.settings(ctx.settings)
    source = f"web:{who.name}"
    try:
        plan = plan_document(data, source, BASE, settings)
    except ManifestError as exc:
        raise Invalid("invalid manifest", exc.problems) from None
    except CannotCheck as exc:
        raise Unavailable("S3", str(exc)) from None
    except RecursionError:
        raise Invalid("invalid manifest", [Problem("", "nested too deeply")]) from None
    try:
        check_output(str(plan.location), settings)
    except OutputRefused as exc:
        problem = Problem("output.location", _named(str(exc), who))
        raise Invalid("output refused", [problem]) from None
    try:
        problems = preflight(plan, settings)
    except TransientError as exc:
        raise Unavailable("S3", str(exc)) from None
    if problems:
        problems = [Problem(p.where, _named(p.message, who)) for p in problems]
        raise Invalid("preflight failed", problems)
    theirs = "this manifest's job was submitted by someone else"
    existing = ctx.store.get(plan.job_id)
    if existing is not None and not owns(who, existing):
        raise HTTPException(409, theirs)
    result = submit(plan, ctx.settings, ctx.celery, ctx.store, team=who.name)
    info = ctx.store.get(result.job_id)
    deadline = time.monotonic() + IN_PROGRESS_WAIT
    while info is None and result.in_progress and time.monotonic() < deadline:
        time.sleep(0.1)  # another request of the same manifest is recording it now
        info = ctx.store.get(result.job_id)
    if info is None:
        raise HTTPException(409, "this job is being submitted by another request; try again", BUSY)
    if not result.created and not owns(who, info):  # another team's, made meanwhile
        raise HTTPException(409, theirs)
    return result.created, info


def _named(message: str, who: Team) -> str:
    """A refusal names the team's prefixes, not the fleet's setting it was checked against."""
    for setting in ("STYLEBATCH_ALLOWED_OUTPUTS", "STYLEBATCH_ALLOWED_INPUTS"):
        message = message.replace(
            f"({setting}=", f"(team {who.name}'s allowed {setting[19:].lower()}: "
        )
    return message


@router.post(
    "/jobs",
    status_code=201,
    tags=["jobs"],
    summary="Submit a manifest (YAML or JSON body)",
    responses={
        200: {"description": "the same manifest over the same inputs: the existing job"},
        422: {"description": "every problem with its path"},
        413: {"description": "body over the limit"},
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
async def post_job(request: Request, who: TeamDep) -> Response:
    kind = request.headers.get("content-type", "")
    data = parse_body(await request.body(), kind)  # at most STYLEBATCH_WEB_MAX_BODY (app.py)
    ctx = web(request)
    created, info = await run_in_threadpool(submit_document, ctx, who, data)
    record = await run_in_threadpool(jobview.status_record, ctx.store, info)
    return JSONResponse(record, status_code=201 if created else 200)


@router.get("/jobs", tags=["jobs"], summary="The team's jobs, newest first")
def list_jobs(
    request: Request,
    who: TeamDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> dict[str, Any]:
    store = web(request).store
    found = store.jobs(limit, offset, team=who.name)
    now = store.now()
    jobs = [jobview.job_record(i) | {"eta_seconds": jobview.eta(i, now)} for i in found]
    more = offset + limit < store.count_jobs(team=who.name)  # the index, not what was found
    return {"jobs": jobs, "next_offset": offset + limit if more else None}


@router.get("/jobs/{job_id}", tags=["jobs"], summary="A job: the facts of `status --json`")
def get_job(request: Request, who: TeamDep, job_id: str) -> dict[str, Any]:
    info = job_of(request, who, job_id)
    return jobview.status_record(web(request).store, info) | {"facets": facets(info)}


@router.post("/jobs/{job_id}/cancel", tags=["jobs"], summary="Cancel: unstarted renders skip")
def cancel_job(request: Request, who: TeamDep, job_id: str) -> dict[str, Any]:
    info = job_of(request, who, job_id)
    web(request).store.cancel(info.job_id)
    return {"job": info.job_id, "cancel_requested": True}


@router.post("/jobs/{job_id}/retry", tags=["jobs"], summary="Re-drive the failed renders")
def retry_job(request: Request, who: TeamDep, job_id: str) -> dict[str, Any]:
    from scheduler.submit import retry_failed

    info = job_of(request, who, job_id)
    ctx = web(request)
    count = retry_failed(info.job_id, ctx.settings, ctx.celery, ctx.store)
    return {"job": info.job_id, "retried": count}


def render_record(info: JobInfo, render: Any, state: dict[str, Any]) -> dict[str, Any]:
    base = f"/jobs/{info.job_id}/renders/{render.id}"
    status = state.get("status", "pending")
    return {
        "render": render.id,
        "content": render.content_name,
        "content_uri": render.content,
        "style": render.style,
        "style_images": [{"uri": u, "weight": w} for u, w in render.style_images],
        "size": str(render.size),
        "mask": render.mask or None,
        "status": status,
        "error": state.get("error"),
        "seconds": state.get("seconds"),
        "device": state.get("device"),
        "pixel_iterations": state.get("pixel_iterations"),
        "output": info.location.uri_of(render.key),
        "links": {
            "self": base,
            "page": f"/ui{base}",
            **(
                {"thumbnail": f"{base}/thumbnail", "image": f"{base}/image"}
                if status in ("done", "skipped")
                else {}
            ),
        },
    }


def renders_page(
    request: Request, who: Team, job_id: str, status, style, size, content, limit, after
) -> tuple[JobInfo, Any]:
    """One page of the job's renders (``status``: a state's name, or None for any)."""
    info = job_of(request, who, job_id)
    page = web(request).store.renders_page(
        info.job_id,
        status=status,
        style=style,
        size=size,
        content=content,
        limit=limit,
        after=after,
    )
    return info, page


Text = Annotated[str | None, Query(max_length=300)]


@router.get("/jobs/{job_id}/renders", tags=["renders"], summary="A page of a job's renders")
def list_renders(
    request: Request,
    who: TeamDep,
    job_id: str,
    status: Status | None = None,
    style: Text = None,
    size: Text = None,
    content: Text = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    after: Annotated[str, Query(max_length=100, description="`next` of the last page")] = "",
) -> dict[str, Any]:
    """Filtered by state, style, size (or channel) and content name, in render-id order;
    follow ``next`` (None at the end). A page may hold fewer than ``limit`` where few
    renders match: its cost is bounded, not the job's size."""
    state = status.value if status else None
    info, page = renders_page(request, who, job_id, state, style, size, content, limit, after)
    return {
        "job": info.job_id,
        "renders": [render_record(info, r, s) for r, s in page.renders],
        "next": page.next,
    }


def render_of(request: Request, who: Team, job_id: str, render_id: str):
    info = job_of(request, who, job_id)
    found = web(request).store.render(info.job_id, render_id) if len(render_id) <= 100 else None
    if found is None:
        raise HTTPException(404, f"job {info.job_id} has no render {render_id[:100]}")
    return info, *found


@router.get("/jobs/{job_id}/renders/{render_id}", tags=["renders"], summary="One render")
def get_render(request: Request, who: TeamDep, job_id: str, render_id: str) -> dict[str, Any]:
    return render_detail(*render_of(request, who, job_id, render_id))


def render_detail(info: JobInfo, render: Any, state: dict[str, Any]) -> dict[str, Any]:
    """One render as its page and GET /jobs/{id}/renders/{render} show it."""
    record = render_record(info, render, state) | {"params": render.params}
    record["weights"] = render.weights
    record["credentials_planned"] = info.meta.get("credentials") == "1"
    return record


# A render's URLs are stable while its output may be rendered again (retry, --force): a
# browser keeps what it fetched but asks again each time, and gets 304 while it is the same.
PRIVATE = {"Cache-Control": "private, no-cache"}


def etag_of(version: str) -> str:
    return '"' + version.replace('"', "").replace("\\", "") + '"'


def unchanged(request: Request, etag: str) -> bool:
    """The browser's copy (If-None-Match) is this version."""
    given = request.headers.get("if-none-match", "")
    tags = {t.strip().removeprefix("W/") for t in given.split(",")}
    return etag in tags or "*" in tags


def versioned(request: Request, data: bytes, media_type: str) -> Response:
    """Bytes read whole (an output, a contact sheet), their digest the ETag."""
    import hashlib

    etag = etag_of(hashlib.sha256(data).hexdigest()[:32])
    headers = PRIVATE | {"ETag": etag}
    if unchanged(request, etag):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=media_type, headers=headers)


def output_of(request: Request, who: Team, job_id: str, render_id: str, how: str) -> Any:
    """(the job, what ``Outputs.<how>`` made of the render's output); 404 while it has none."""
    info, render, _ = render_of(request, who, job_id, render_id)
    made = getattr(web(request).outputs, how)(info.location, render.key)
    if made is None:
        raise HTTPException(404, "no output (yet) for this render")
    return info, made


@router.get(
    "/jobs/{job_id}/renders/{render_id}/thumbnail",
    tags=["renders"],
    summary="A render's thumbnail (JPEG, made once per output version)",
    response_class=FileResponse,
    responses={200: {"content": {"image/jpeg": {}}}},
)
def thumbnail(request: Request, who: TeamDep, job_id: str, render_id: str) -> Response:
    _, (path, facts) = output_of(request, who, job_id, render_id, "thumbnail")
    headers = PRIVATE | {"ETag": etag_of(facts["version"])}
    if unchanged(request, headers["ETag"]):
        return Response(status_code=304, headers=headers)
    return FileResponse(path, media_type="image/jpeg", headers=headers)


@router.get(
    "/jobs/{job_id}/renders/{render_id}/image",
    tags=["renders"],
    summary="A render's output, through the server",
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}}},
)
def image(request: Request, who: TeamDep, job_id: str, render_id: str) -> Response:
    info, data = output_of(request, who, job_id, render_id, "read")
    kind = IMAGE_TYPES.get(info.meta.get("format", ""), "application/octet-stream")
    return versioned(request, data, kind)


@router.get(
    "/jobs/{job_id}/contact-sheet",
    tags=["jobs"],
    summary="The job's contact sheet (PNG, made when the job ends)",
    responses={200: {"content": {"image/png": {}}}},
)
def contact_sheet(request: Request, who: TeamDep, job_id: str) -> Response:
    from common.report import record_key

    info = job_of(request, who, job_id)
    data = web(request).outputs.read(info.location, record_key(info.job_id, "contact_sheet.png"))
    if data is None:
        raise HTTPException(404, "no contact sheet yet: it is made when the job ends")
    return versioned(request, data, "image/png")


def schedules_of(ctx: Web, who: Team, slots: int = 5) -> list[dict[str, Any]]:
    """The scheduled manifests (STYLEBATCH_SCHEDULES) that write under the team's outputs:
    their next slots, and the jobs of their past ones."""
    from common.access import under
    from common.manifest import parse_manifest
    from common.schedule import latest_slot, next_slot, slot_label
    from common.uris import parse_location
    from scheduler.beat import ManifestSource, load_manifest

    if not ctx.settings.schedules:
        return []
    where = ctx.settings.schedules
    try:
        sources = ManifestSource(where, ctx.settings).scan()
    except redis.RedisError:
        raise  # answered 503 naming Redis (app.py)
    except Exception as exc:  # S3 away, or the local folder unreadable: named as it is
        service = "S3" if where.startswith("s3://") else "the schedules folder"
        raise Unavailable(service, f"cannot list {where} (STYLEBATCH_SCHEDULES): {exc}") from None
    now = datetime.now(UTC)
    out = []
    for source in sorted(sources):
        try:
            data, base = load_manifest(source, ctx.settings)
            manifest = parse_manifest(data, source)
            where = str(parse_location(manifest.output.location, base))
        except Exception:
            continue  # beat reports broken manifests; the team sees only its own working ones
        if manifest.schedule is None or not any(under(where, p) for p in who.allowed_outputs):
            continue
        cron, zone = manifest.schedule.cron, manifest.schedule.timezone
        upcoming, at = [], now
        for _ in range(slots):
            at = next_slot(cron, zone, at)
            upcoming.append(at.isoformat())
        past, at = [], now
        for _ in range(slots):
            at = latest_slot(cron, zone, at)
            past.append(at)
            at = datetime.fromtimestamp(at.timestamp() - 1, UTC)
        held = ctx.store.slot_jobs(manifest.name, [slot_label(s) for s in past])
        past_jobs = []
        for slot in past:
            job = held.get(slot_label(slot))
            info = ctx.store.get(job) if job else None
            past_jobs.append(
                {"slot": slot.isoformat(), "job": job, "status": info.status if info else None}
            )
        out.append(
            {
                "source": source,
                "name": manifest.name,
                "cron": cron,
                "timezone": zone,
                "output": where,
                "next": upcoming,
                "past": past_jobs,
            }
        )
    return out


@router.get("/schedules", tags=["schedules"], summary="Scheduled manifests: slots and jobs")
def schedules(request: Request, who: TeamDep) -> dict[str, Any]:
    return {"schedules": schedules_of(web(request), who)}


@router.get("/ready", tags=["health"], summary="Readiness: Redis and S3 answer")
def ready(request: Request) -> JSONResponse:
    import dataclasses

    from common.errors import ConfigError
    from common.startup import check_object_store, check_redis, uses_object_store

    settings = dataclasses.replace(web(request).settings, startup_wait=0)
    checks: dict[str, str] = {}
    for name, check in (("redis", check_redis), ("s3", check_object_store)):
        if name == "s3" and not uses_object_store(settings):
            checks[name] = "not used"
            continue
        try:
            check(settings)
            checks[name] = "ok"
        except ConfigError as exc:
            checks[name] = f"unavailable: {exc}"
        except Exception as exc:
            checks[name] = f"unavailable: {type(exc).__name__}: {exc}"
    ok = all(v in ("ok", "not used") for v in checks.values())
    return JSONResponse(checks, status_code=200 if ok else 503)


@router.get("/healthz", tags=["health"], summary="Liveness: the process answers")
def healthz() -> dict[str, str]:
    return {"status": "ok"}
