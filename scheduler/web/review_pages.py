"""The review workflow's pages: the gallery (decisions as badges and a filter, a selection for
bulk decisions and re-renders, the zip of the approved set), a render's page (side by side
with its content photo and mask, approve and reject with a note, previous and next in the
gallery's filter, its versions, a re-render form) and a content's compare page (one shot
across its styles and sizes). Each form goes through the API's own functions
(scheduler/web/routes/reviews.py) and shows what came of it on the next page."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from common.state.model import REVIEW_DECISIONS
from scheduler import jobview, review
from scheduler.web import models
from scheduler.web.deps import TeamDep, job_of, rate, render_of, web
from scheduler.web.problems import ApiError
from scheduler.web.routes import renders as renders_api
from scheduler.web.routes.reviews import decide_many, decide_one, rerender
from scheduler.web.templating import flash, page

router = APIRouter(prefix="/ui", include_in_schema=False)
GALLERY_PAGE = 48
COMPARED = 200  # renders of one content shown side by side, at most
NEAR_PAGES = 10  # pages (of up to 2,000 candidates each) looked through for the next render
FILTERS = ("status", "style", "size", "content", "decision")
DECISION_FILTERS = (*REVIEW_DECISIONS, "undecided")
Text = Annotated[str | None, Query(max_length=300)]


def read_filters(given: dict[str, str | None]) -> dict[str, str]:
    """The gallery's filters as given ('' for any), checked."""
    found = {k: v for k, v in given.items() if k in FILTERS and v}
    if found.get("status") and found["status"] not in renders_api.STATES:
        choices = ", ".join(renders_api.STATES)
        raise ApiError("invalid-request", f"no such state: {found['status']} (one of {choices})")
    if found.get("decision") and found["decision"] not in DECISION_FILTERS:
        raise ApiError("invalid-request", f"no such decision: {found['decision'][:40]}")
    return found


def _page_of(request: Request, info: Any, filters: dict[str, str], after: str, limit: int):
    return web(request).store.renders_page(
        info.job_id, status=filters.get("status"), style=filters.get("style"),
        size=filters.get("size"), content=filters.get("content"),
        decision=filters.get("decision"), contains=True, limit=limit, after=after,
    )  # fmt: skip


@router.get("/jobs/{job_id}/gallery")
def gallery(
    request: Request,
    who: TeamDep,
    job_id: str,
    status: Text = None,
    style: Text = None,
    size: Text = None,
    content: Text = None,
    decision: Text = None,
    after: Annotated[str, Query(max_length=100)] = "",
) -> HTMLResponse:
    filters = read_filters(
        {"status": status, "style": style, "size": size, "content": content, "decision": decision}
    )
    info = job_of(request, who, job_id)
    found = _page_of(request, info, filters, after, GALLERY_PAGE)
    query = urlencode(filters)
    next_link = f"?{urlencode({**filters, 'after': found.next})}" if found.next else None
    export = {k: v for k, v in filters.items() if k != "decision"}
    return page(
        request, "gallery.html", team=who, job=jobview.job_record(info),
        renders=[renders_api.render_record(info, r, s) for r, s in found.renders],
        facets=jobview.facets(info), states=renders_api.STATES, decisions=DECISION_FILTERS,
        filters=filters, query=query, next=next_link,
        first=f"?{query}" if after else None,
        export_approved=f"/v1/jobs/{info.job_id}/export?{urlencode(export)}",
        export_filter=f"/v1/jobs/{info.job_id}/export?"
        + urlencode({**export, "decision": filters.get("decision", "any")}),
    )  # fmt: skip


@router.get("/jobs/{job_id}/renders/{render_id}")
def render_page(
    request: Request,
    who: TeamDep,
    job_id: str,
    render_id: str,
    status: Text = None,
    style: Text = None,
    size: Text = None,
    content: Text = None,
    decision: Text = None,
) -> HTMLResponse:
    """A render beside its content photo (and mask), its decision and the form to change it,
    previous and next within the gallery's filter (carried in the query), its versions."""
    filters = read_filters(
        {"status": status, "style": style, "size": size, "content": content, "decision": decision}
    )
    info, render, state = render_of(request, who, job_id, render_id)
    store = web(request).store
    record = renders_api.render_detail(store, info, render, state)
    facts = None
    if record["status"] in ("done", "skipped"):  # the output's size and credentials
        made = web(request).outputs.thumbnail(info.location, render.key)
        facts = made[1] if made else None
    query = urlencode(filters)
    here = f"/ui/jobs/{info.job_id}/renders/"
    near = {}
    for name, backwards in (("next", False), ("prev", True)):
        after, found = render.id, None
        for _ in range(NEAR_PAGES):  # past renders the filter passes over, a page at a time
            found = store.renders_page(
                info.job_id, status=filters.get("status"), style=filters.get("style"),
                size=filters.get("size"), content=filters.get("content"),
                decision=filters.get("decision"), contains=True, limit=1, after=after,
                backwards=backwards,
            )  # fmt: skip
            if found.renders or not found.next:
                break
            after = found.next
        near[name] = f"{here}{found.renders[0][0].id}?{query}" if found.renders else None
    versions = []
    for v in record["versions"]:
        reviewed = store.reviews(v["job"], [v["render"]]).get(v["render"])
        versions.append(v | {"review": reviewed})
    return page(
        request, "render.html", team=who, job=jobview.job_record(info), r=record, facts=facts,
        query=query, near=near, versions=versions,
        style_weight=render.params.get("style_weight"),
        gallery=f"/ui/jobs/{info.job_id}/gallery?{query}",
    )  # fmt: skip


@router.post("/jobs/{job_id}/renders/{render_id}/review")
async def review_page(request: Request, who: TeamDep, job_id: str, render_id: str) -> Response:
    """The render page's approve and reject: back to the render (or on to the next one,
    ``advance``), which shows what came of it; a stale decision is said, not recorded."""
    form = await request.form()
    query = str(form.get("query", ""))[:1000]
    try:
        version = int(str(form.get("version", "")))
    except ValueError:
        raise ApiError("invalid-request", "version: the render's review version") from None
    choice = str(form.get("decision", ""))
    if choice not in ("approved", "rejected"):
        raise ApiError("invalid-request", "decision: approved or rejected")
    body = models.Decision(
        decision=choice, note=str(form.get("note", ""))[:2000], version=max(0, version),
        supersede=form.get("supersede") == "1",
    )  # fmt: skip
    here = f"/ui/jobs/{job_id}/renders/{render_id}?{query}"
    try:
        found = decide_one(request, who, job_id, render_id, body)
    except ApiError as exc:
        if exc.code not in ("stale", "no-output"):
            raise
        return flash(RedirectResponse(here, status_code=303), f"not recorded: {exc.detail}", True)
    said = found["outcome"].said(choice)
    target = str(form.get("advance", ""))
    go = target if target.startswith(f"/ui/jobs/{job_id}/renders/") else here
    return flash(RedirectResponse(go, status_code=303), said)


@router.post("/jobs/{job_id}/reviews")
async def bulk_page(request: Request, who: TeamDep, job_id: str) -> Response:
    """The gallery's bulk decisions: on the renders picked, or on every render the filter
    matches; back to the gallery with what came of it."""
    form = await request.form()
    query = str(form.get("query", ""))[:1000]
    choice, _, scope = str(form.get("action", "")).partition(":")
    if choice not in ("approved", "rejected") or scope not in ("picked", "filter"):
        raise ApiError("invalid-request", "action: approved or rejected, picked or filter")
    filters = read_filters({k: str(form.get(f"f_{k}", "")) for k in FILTERS})
    back = RedirectResponse(f"/ui/jobs/{job_id}/gallery?{query}", status_code=303)
    try:
        picks = [
            models.Picked(render=rid, version=int(version or 0))
            for rid, _, version in (str(v).partition(":") for v in form.getlist("pick")[:1000])
        ]
        body = models.Decisions(
            decision=choice, note=str(form.get("note", ""))[:2000],
            renders=picks if scope == "picked" else None,
            filter=models.Filter(**filters) if scope == "filter" else None,
        )  # fmt: skip
    except (ValueError, ValidationError):
        raise ApiError("invalid-request", "pick: a render id and its review version") from None
    if scope == "picked" and not picks:
        return flash(back, "nothing picked: tick the renders first", True)
    made = decide_many(request, who, job_id, body)
    return flash(back, made["detail"], bool(made["stale"]) and not made["recorded"])


OVERRIDE_FIELDS = ("style_weight", "preset", "seed", "palette", "focus", "color")


def overrides_of(form: Any) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The re-render form's fields as overrides (blank ones left out), each converted, every
    problem named by its field."""
    out: dict[str, Any] = {}
    problems = []
    for name in OVERRIDE_FIELDS:
        text = str(form.get(name, "")).strip()
        if not text:
            continue
        try:
            if name == "style_weight":
                out[name] = float(text)
            elif name == "seed":
                out[name] = int(text)
            elif name == "palette":
                out[name] = {"colors": [c.strip() for c in text.split(",") if c.strip()]}
            elif name == "focus":
                x, y = (float(v) for v in text.split(","))
                out[name] = [x, y]
            else:
                out[name] = text
        except ValueError:
            how = {"focus": "x,y (each 0..1)", "seed": "a whole number"}.get(name, "a number")
            problems.append({"where": f"overrides.{name}", "message": f"{text[:40]!r}: {how}"})
    return out, problems


@router.post("/jobs/{job_id}/rerender")
async def rerender_page(request: Request, who: TeamDep, job_id: str) -> Response:
    """The re-render form (a render's page, or the gallery's selection): a new job, whose
    page is shown next; refusals on an error page, each problem named."""
    form = await request.form()
    rate(request, who, "submit")
    info = job_of(request, who, job_id)
    chosen = [str(v).partition(":")[0] for v in form.getlist("pick")][:10_000]
    chosen += [str(v) for v in form.getlist("render")][:10_000]
    overrides, problems = overrides_of(form)
    if problems:  # with what the model finds in the fields that did convert: every problem
        _, more = review.read_overrides(overrides)
        problems += [m for m in more if m["where"] != "overrides" or not overrides]
        problems = [p for p in problems if p["message"] != "give at least one change"] or problems
        detail = "; ".join(f"{p['where']}: {p['message']}" for p in problems)
        raise ApiError("invalid-request", detail, problems=problems)
    if not chosen:
        raise ApiError("invalid-request", "nothing picked to re-render")
    body = {"renders": list(dict.fromkeys(chosen)), "overrides": overrides}
    created, child, job = await rerender(request, who, info, body)
    said = (
        f"{'re-render submitted' if created else 'this re-render was submitted before'}: "
        f"{len(job.renders)} render(s) of {info.job_id} with {', '.join(sorted(overrides))} "
        "changed"
    )
    return flash(RedirectResponse(f"/ui/jobs/{child.job_id}", status_code=303), said)


@router.get("/jobs/{job_id}/compare")
def compare_page(
    request: Request,
    who: TeamDep,
    job_id: str,
    content: Annotated[str, Query(min_length=1, max_length=300)],
) -> HTMLResponse:
    """One content across its styles and sizes: the photo, then a grid of its outputs (a
    row per size, a column per style)."""
    info = job_of(request, who, job_id)
    found = web(request).store.renders_page(info.job_id, content=content, limit=COMPARED)
    renders = [renders_api.render_record(info, r, s) for r, s in found.renders]
    if not renders:
        raise ApiError("not-found", f"job {info.job_id} has no content named {content[:100]}")
    styles = sorted({r["style"] for r in renders})
    sizes = list(dict.fromkeys(r["size"] for r in renders))
    grid = {(r["size"], r["style"]): r for r in renders}
    return page(
        request, "compare.html", team=who, job=jobview.job_record(info), content=content,
        first=renders[0], styles=styles, sizes=sizes, grid=grid, more=bool(found.next),
    )  # fmt: skip
