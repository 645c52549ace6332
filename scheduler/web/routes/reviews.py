"""Review: decide on a render (or many), download a job's approved set as a zip, and re-render
a selection with a change. The decisions are fleet state (common/state/reviews.py: a version
per render, so a stale write is refused, never lost); the workflow's rules are in
scheduler/review.py. Exports and re-renders take the team's submit rate."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from common.access import under
from common.manifest import _where
from scheduler import review
from scheduler.web import models
from scheduler.web.caching import PRIVATE, etag_of, unchanged, versioned
from scheduler.web.deps import TeamDep, base_of, job_of, rate, render_of, web
from scheduler.web.export import ClosingStream, streamed
from scheduler.web.intake import plan_record, submit_document
from scheduler.web.problems import READ, WRITE, ApiError, declare
from scheduler.web.routes.jobs import detail

router = APIRouter(tags=["review"])
EXPORTS_AT_ONCE = 4  # zips one server streams at once (each holds its read-ahead)
BINARY = {"schema": {"type": "string", "format": "binary"}}
Text = Annotated[str | None, Query(max_length=300)]


def decide_one(request: Request, who: Any, job_id: str, render_id: str, body: Any) -> dict:
    """One render's decision; 409 ``stale`` where someone decided since the version given,
    ``no-output`` where there is nothing to decide on yet."""
    info, render, _ = render_of(request, who, job_id, render_id)
    ctx = web(request)
    outcome = review.decide(
        ctx.store, ctx.celery, info.job_id, body.decision, [(render.id, body.version)],
        body.note, who.name, body.supersede,
    )  # fmt: skip
    if outcome is None:
        raise ApiError("not-found", f"no such job: {job_id}")
    if outcome.stale:
        current = outcome.stale[0]["current"] or {}
        raise ApiError(
            "stale",
            f"decided meanwhile: {current.get('decision', 'undecided')} by "
            f"{current.get('by') or '?'} (version {outcome.stale[0]['version']}); "
            "not changed. Look again, then decide with that version",
            current=current or None,
            version=outcome.stale[0]["version"],
        )
    if outcome.refused:
        raise ApiError("no-output", f"render {render.id}: {outcome.refused[0]['why']}")
    now = ctx.store.reviews(info.job_id, [render.id]).get(render.id)
    return {"job": info.job_id, "render": render.id, "review": now, "outcome": outcome}


@router.put(
    "/jobs/{job_id}/renders/{render_id}/review",
    summary="Approve or reject a render",
    response_model=models.Decided,
    responses=declare(*WRITE, 422),
)
def put_review(
    request: Request, who: TeamDep, job_id: str, render_id: str, body: models.Decision
) -> dict[str, Any]:
    """With a note, as the asking team. ``version`` is the render's ``review_version`` as you
    saw it: where another reviewer decided since, nothing changes and the answer is 409
    ``stale`` with their decision (``current``). The same decision again changes nothing."""
    found = decide_one(request, who, job_id, render_id, body)
    return {k: found[k] for k in ("job", "render", "review")}


@router.post(
    "/jobs/{job_id}/reviews",
    summary="Approve or reject many renders: a selection or a filter",
    response_model=models.DecisionsMade,
    responses=declare(*WRITE, 422),
)
def post_reviews(
    request: Request, who: TeamDep, job_id: str, body: models.Decisions
) -> dict[str, Any]:
    """A selection gives each render with the version seen; a filter takes every render it
    matches as it stands when read (up to 10,000). What someone else decided meanwhile is
    not changed: it is listed under ``stale``."""
    return decide_many(request, who, job_id, body)


def decide_many(request: Request, who: Any, job_id: str, body: Any) -> dict[str, Any]:
    info = job_of(request, who, job_id)
    ctx = web(request)
    if (body.renders is None) == (body.filter is None):
        raise ApiError("invalid-request", "give either renders (a selection) or a filter")
    truncated = False
    if body.renders is not None:
        chosen = [(p.render, p.version) for p in body.renders]
    else:
        wanted = body.filter.model_dump(exclude_none=True)
        chosen = [
            (r.id, (s.get("review") or {}).get("version", 0))
            for r, s in review.selected(ctx.store, info.job_id, wanted, with_output=True)
        ]
        truncated = len(chosen) >= review.SELECTION_LIMIT
    outcome = review.decide(
        ctx.store, ctx.celery, info.job_id, body.decision, chosen, body.note, who.name,
        body.supersede,
    )  # fmt: skip
    if outcome is None:
        raise ApiError("not-found", f"no such job: {job_id}")
    return {
        "job": info.job_id,
        "recorded": outcome.recorded,
        "unchanged": outcome.unchanged,
        "stale": outcome.stale,
        "refused": outcome.refused,
        "superseded": outcome.superseded,
        "reviewed": outcome.reviewed,
        "truncated": truncated,
        "detail": outcome.said(body.decision)
        + (
            f"; only the first {review.SELECTION_LIMIT} matching renders: ask again for the rest"
            if truncated
            else ""
        ),
    }


@router.get(
    "/jobs/{job_id}/export",
    summary="The approved renders (or any filter) as a zip, with a CSV",
    response_class=Response,
    responses={
        200: {"content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}},
        **declare(*READ, 422),
    },
)
def export(
    request: Request,
    who: TeamDep,
    job_id: str,
    decision: Annotated[
        str,
        Query(
            pattern="^(approved|rejected|superseded|undecided|any)$",
            description="approved (default: newer approved versions of superseded renders "
            "too), rejected, superseded, undecided, or any",
        ),
    ] = "approved",
    status: Annotated[
        str | None, Query(pattern="^(pending|running|done|skipped|failed|cancelled)$")
    ] = None,
    style: Text = None,
    size: Text = None,
    content: Text = None,
) -> Response:
    """Streamed from storage in bounded memory; ends with renders.csv (key, render, job,
    content, style, size, decision, reviewer, note, device, cost in device-seconds). At most
    one export per team and EXPORTS_AT_ONCE per server stream at once (429 otherwise)."""
    rate(request, who, "submit")
    info = job_of(request, who, job_id)
    ctx = web(request)
    if not ctx.begin_export(who.name, EXPORTS_AT_ONCE):
        raise ApiError(
            "rate-limited",
            "an export of this team is streaming, or the server streams all it may at once; "
            "retry when it is done",
            {"Retry-After": "30"},
        )
    filters = {"decision": decision, "status": status, "style": style, "size": size,
               "content": content}  # fmt: skip
    filters = {k: v for k, v in filters.items() if v}
    name = f"{info.job_id}-{decision}.zip"
    return ClosingStream(
        streamed(ctx, info, filters),
        lambda: ctx.end_export(who.name),
        media_type="application/zip",
        headers=PRIVATE | {"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.post(
    "/jobs/{job_id}/rerender",
    status_code=201,
    summary="Re-render a selection with a change: a new job",
    response_model=models.JobDetail,
    responses={200: {"description": "The same re-render asked before: its job"},
               **declare(*WRITE, 422)},
)  # fmt: skip
async def post_rerender(
    request: Request, who: TeamDep, job_id: str, body: Annotated[dict, Body()]
) -> Response:
    """The new job records its parent, and each render the one it re-renders (the render's
    ``versions``). Its manifest goes through the same validation and confinement as any
    other; invalid overrides get 422 with every problem."""
    rate(request, who, "submit")
    info = job_of(request, who, job_id)
    created, child, job = await rerender(request, who, info, body)
    record = await run_in_threadpool(detail, web(request).store, child, base_of(request))
    record["plan"] = plan_record(job)
    return JSONResponse(models.JobDetail(**record).model_dump(mode="json"), 201 if created else 200)


async def rerender(request: Request, who: Any, info: Any, body: dict) -> tuple[bool, Any, Any]:
    """Check the request (every problem at once), build the manifest, submit it as the team,
    then record the lineage both ways."""
    problems = []
    try:
        asked = models.Rerender.model_validate(body)
    except ValidationError as exc:
        asked = None
        problems += [{"where": _where(e["loc"]), "message": e["msg"]} for e in exc.errors()]
    overrides, found = review.read_overrides(body.get("overrides") if body else None)
    problems += found
    if asked is not None and (asked.renders is None) == (asked.filter is None):
        problems.append({"where": "", "message": "give either renders (ids) or a filter"})
    if problems:
        detail = "; ".join(f"{p['where'] or 'body'}: {p['message']}" for p in problems)
        raise ApiError("invalid-request", detail, problems=problems)
    ctx = web(request)
    parents = await run_in_threadpool(_chosen, ctx.store, info, asked)
    if not parents:
        nothing = [{"where": "filter", "message": "matches no render"}]
        raise ApiError("invalid-request", "no render matches this selection", problems=nothing)
    if not any(overrides.changes(r) for r in parents):
        same = [{"where": "overrides", "message": "changes nothing: each selected render was "
                 "made with these values already"}]  # fmt: skip
        raise ApiError("invalid-request", "overrides: changes nothing", problems=same)
    document = review.rerender_document(info, parents, overrides, who.name)
    created, child, job = await run_in_threadpool(
        submit_document, ctx, who, json.dumps(document).encode(), "application/json"
    )
    pairs = review.lineage_pairs(parents, job.renders)
    await run_in_threadpool(_link, ctx.store, info.job_id, child.job_id, pairs)
    return created, ctx.store.get(child.job_id) or child, job


def _chosen(store: Any, info: Any, asked: models.Rerender) -> list[Any]:
    if asked.renders is not None:
        specs = store.specs(info.job_id, list(dict.fromkeys(asked.renders)))
        if len(specs) != len(set(asked.renders)):
            known = {r.id for r in specs}
            missing = [r for r in asked.renders if r not in known]
            raise ApiError("not-found", f"job {info.job_id} has no render {missing[0][:100]}")
        return specs
    wanted = asked.filter.model_dump(exclude_none=True)
    return [r for r, s in review.selected(store, info.job_id, wanted)]


def _link(store: Any, parent: str, child: str, pairs: list[tuple[str, str]]) -> None:
    """The lineage, both ways, and the child's parent: idempotent, so a re-render asked
    again (the same job) repairs what a cut-short first request left undone."""
    store.set_lineage(child, [(c, f"{parent} {p}") for p, c in pairs])
    store.add_versions(parent, [(p, f"{child} {c}") for p, c in pairs])
    store.touch_fields(child, parent=parent)


INPUT_RESPONSES = {
    200: {"content": {"image/png": BINARY, "image/jpeg": BINARY, "image/webp": BINARY}},
    304: {"description": "The copy the browser has is current"},
    **declare(*READ, 422),
}


@router.get(
    "/jobs/{job_id}/renders/{render_id}/content",
    summary="A render's content photo (thumbnail=true: a JPEG of 240 px)",
    response_class=Response,
    responses=INPUT_RESPONSES,
)
def render_content(
    request: Request, who: TeamDep, job_id: str, render_id: str, thumbnail: bool = False
) -> Response:
    """What the render was made from, to compare side by side."""
    return _input(request, who, job_id, render_id, "content", thumbnail)


@router.get(
    "/jobs/{job_id}/renders/{render_id}/mask",
    summary="A render's mask image (thumbnail=true: a JPEG of 240 px)",
    response_class=Response,
    responses=INPUT_RESPONSES,
)
def render_mask(
    request: Request, who: TeamDep, job_id: str, render_id: str, thumbnail: bool = False
) -> Response:
    """404 where it has none (or protects the content's own alpha channel)."""
    return _input(request, who, job_id, render_id, "mask", thumbnail)


def _input(request: Request, who: Any, job_id: str, render_id: str, what: str, small: bool):
    """Read only inside the team's allowed inputs (a job submitted from the command line
    under the team's outputs may have read from elsewhere: that is not shown)."""
    _, render, _ = render_of(request, who, job_id, render_id)
    uri = render.content if what == "content" else render.mask
    if not uri or uri == "alpha":
        raise ApiError("not-found", "this render has no mask image")
    if not any(under(uri, prefix) for prefix in who.allowed_inputs):
        raise ApiError("not-found", f"the {what} is not among this team's inputs")
    outputs = web(request).outputs
    if small:
        made = outputs.thumbnail_uri(uri)
        if made is None:
            raise ApiError("not-found", f"the {what} is no longer there")
        path, facts = made
        headers = PRIVATE | {"ETag": etag_of(facts["version"])}
        if unchanged(request, headers["ETag"]):
            return Response(status_code=304, headers=headers)
        return Response(path.read_bytes(), media_type="image/jpeg", headers=headers)
    data = outputs.read_uri(uri)
    if data is None:
        raise ApiError("not-found", f"the {what} is no longer there")
    return versioned(request, data, _image_type(data))


def _image_type(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"
