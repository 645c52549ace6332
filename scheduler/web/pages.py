"""The pages, rendered here (Jinja2, autoescaped: nothing read from job state reaches the
browser as HTML), with a little plain JavaScript for live progress and no build step. They
read through the same functions as the API (scheduler/web/api.py, scheduler/jobview.py).

Sessions: the login form takes a team's token and sets it as an HttpOnly, SameSite=Strict
cookie; every form carries the session's anti-forgery value (scheduler/web/core.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape

from scheduler import jobview
from scheduler.web import api
from scheduler.web.core import COOKIE, Team, facets, job_of, team, token_of, web
from scheduler.web.teams import authenticate, csrf_token

HERE = Path(__file__).parent
env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
)
templates = Jinja2Templates(env=env)
router = APIRouter(prefix="/ui", include_in_schema=False)
TeamDep = Annotated[Team, Depends(team)]
GALLERY_PAGE = 48


def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    token, _ = token_of(request)
    context.setdefault("team", None)
    response = templates.TemplateResponse(
        request, name, {"csrf": csrf_token(token) if token else "", **context}, status_code=status
    )
    response.headers["Cache-Control"] = "no-store"  # it holds the session's anti-forgery value
    return response


env.filters["duration"] = jobview.duration


@router.get("/login")
def login_form(request: Request) -> HTMLResponse:
    return page(request, "login.html")


@router.post("/login")
def login(request: Request, token: Annotated[str, Form(max_length=500)] = "") -> Response:
    """The token becomes the session cookie (no anti-forgery check here: there is no session
    yet, and a forged login could only log someone in with the forger's own token)."""
    if authenticate(web(request).teams, token) is None:
        return page(request, "login.html", status=401, error="unknown token")
    response = RedirectResponse("/ui", status_code=303)
    secure = web(request).secure_cookies or request.url.scheme == "https"
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=secure)
    return response


@router.post("/logout")
def logout(request: Request, who: TeamDep) -> Response:
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE)
    return response


@router.get("")
def jobs_page(
    request: Request, who: TeamDep, offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0
) -> HTMLResponse:
    listed = api.list_jobs(request, who, limit=20, offset=offset)
    return page(request, "jobs.html", team=who, jobs=listed["jobs"], next=listed["next_offset"])


@router.post("/jobs")
async def submit_page(request: Request, who: TeamDep) -> Response:
    form = await request.form()
    text = str(form.get("manifest", ""))  # at most STYLEBATCH_WEB_MAX_BODY (app.py)
    try:
        data = api.parse_body(text.encode())  # read as JSON where it opens with "{"
        _, info = await run_in_threadpool(api.submit_document, web(request), who, data)
    except api.Invalid as exc:
        listed = api.list_jobs(request, who, limit=20, offset=0)
        return page(
            request,
            "jobs.html",
            status=422,
            team=who,
            jobs=listed["jobs"],
            next=listed["next_offset"],
            problems=exc.body(),
            manifest=text,
        )
    return RedirectResponse(f"/ui/jobs/{info.job_id}", status_code=303)


@router.get("/jobs/{job_id}")
def job_page(request: Request, who: TeamDep, job_id: str) -> HTMLResponse:
    info = job_of(request, who, job_id)
    record = jobview.status_record(web(request).store, info)
    ended = info.total - record["pending"] - record["running"]
    return page(request, "job.html", team=who, job=record, ended=ended, facets=facets(info))


ACTIONS = {"cancel": api.cancel_job, "retry": api.retry_job}


@router.post("/jobs/{job_id}/{action}")
def action_page(
    request: Request, who: TeamDep, job_id: str, action: Literal["cancel", "retry"]
) -> Response:
    """The job page's buttons: the API's cancel or retry, then back to the job."""
    ACTIONS[action](request, who, job_id)
    return RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)


Text = Annotated[str | None, Query(max_length=300)]


@router.get("/jobs/{job_id}/gallery")
def gallery(
    request: Request,
    who: TeamDep,
    job_id: str,
    status: Text = None,
    style: Text = None,
    size: Text = None,
    content: Text = None,
    after: Annotated[str, Query(max_length=100)] = "",
) -> HTMLResponse:
    # the filter form sends every field, "" for "any"
    status, style, size, content = status or None, style or None, size or None, content or None
    if status is not None and status not in api.STATES:
        raise HTTPException(422, f"no such state: {status} (one of {', '.join(api.STATES)})")
    info, found = api.renders_page(
        request, who, job_id, status, style, size, content, GALLERY_PAGE, after
    )
    given = {"status": status, "style": style, "size": size, "content": content}
    filters = {k: v for k, v in given.items() if v}
    next_link = f"?{urlencode({**filters, 'after': found.next})}" if found.next else None
    return page(
        request,
        "gallery.html",
        team=who,
        job=jobview.job_record(info),
        renders=[api.render_record(info, r, s) for r, s in found.renders],
        facets=facets(info),
        states=api.STATES,
        filters=filters,
        next=next_link,
        first=f"?{urlencode(filters)}" if after else None,
    )


@router.get("/jobs/{job_id}/renders/{render_id}")
def render_page(request: Request, who: TeamDep, job_id: str, render_id: str) -> HTMLResponse:
    info, render, state = api.render_of(request, who, job_id, render_id)
    record = api.render_detail(info, render, state)
    facts = None
    if record["status"] in ("done", "skipped"):  # the output's size and credentials
        made = web(request).outputs.thumbnail(info.location, render.key)
        facts = made[1] if made else None
    return page(
        request, "render.html", team=who, job=jobview.job_record(info), r=record, facts=facts
    )


@router.get("/jobs/{job_id}/contact-sheet")
def sheet_page(request: Request, who: TeamDep, job_id: str) -> HTMLResponse:
    info = job_of(request, who, job_id)
    return page(request, "sheet.html", team=who, job=jobview.job_record(info))


@router.get("/schedules")
def schedules_page(request: Request, who: TeamDep) -> HTMLResponse:
    found = api.schedules_of(web(request), who)
    return page(request, "schedules.html", team=who, schedules=found)
