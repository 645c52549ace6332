"""Renders: a job's renders in pages (filtered, cursor paging with Link headers), one render,
its thumbnail and its output. Each answer reads the job's record and one page of its
renders, never the whole job."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse

from common.state import TERMINAL, JobInfo
from scheduler.web import models
from scheduler.web.caching import PRIVATE, etag_of, unchanged, versioned
from scheduler.web.deps import TeamDep, base_of, job_of, next_link, render_of, web
from scheduler.web.problems import READ, ApiError, declare

router = APIRouter(tags=["renders"])
STATES = ("pending", "running", *TERMINAL)
Status = Enum("Status", {s: s for s in STATES}, type=str)
IMAGE_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
BINARY = {"schema": {"type": "string", "format": "binary"}}
Text = Annotated[str | None, Query(max_length=300)]


def render_record(info: JobInfo, render: Any, state: dict[str, Any], base: str = "/v1") -> dict:
    """A render as the API and pages show it (models.Render)."""
    path = f"/jobs/{info.job_id}/renders/{render.id}"
    status = state.get("status", "pending")
    has_output = status in ("done", "skipped")
    review = state.get("review") or {}  # its decision; {version} alone once withdrawn
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
        "copies": [{"style": s, "output": info.location.uri_of(k)} for s, k in render.copies],
        "review": review if review.get("decision") else None,
        "review_version": review.get("version", 0),
        "links": {
            "self": f"{base}{path}",
            "page": f"/ui{path}",
            "thumbnail": f"{base}{path}/thumbnail" if has_output else None,
            "image": f"{base}{path}/image" if has_output else None,
        },
    }


def render_detail(
    store: Any, info: JobInfo, render: Any, state: dict[str, Any], base: str = "/v1"
) -> dict:
    """One render as its page and GET .../renders/{render} show it (models.RenderDetail):
    with its decision, its versions (re-renders of it) and the render it re-renders."""
    state = state | {"review": store.reviews(info.job_id, [render.id]).get(render.id)}
    record = render_record(info, render, state, base) | {"params": render.params}
    record["weights"] = render.weights
    record["credentials_planned"] = info.meta.get("credentials") == "1"
    record["versions"] = [_version(j, r) for j, r in store.versions(info.job_id, render.id)]
    parent = store.lineage(info.job_id, [render.id]).get(render.id)
    record["parent"] = _version(*parent) if parent else None
    return record


def _version(job: str, render: str) -> dict[str, str]:
    return {"job": job, "render": render, "page": f"/ui/jobs/{job}/renders/{render}"}


def renders_page(request, who, job_id, status, style, size, content, limit, after):
    """One page of the job's renders (``status``: a state's name, or None for any)."""
    info = job_of(request, who, job_id)
    page = web(request).store.renders_page(
        info.job_id, status=status, style=style, size=size, content=content, limit=limit,
        after=after,
    )  # fmt: skip
    return info, page


@router.get(
    "/jobs/{job_id}/renders",
    summary="A page of a job's renders",
    response_model=models.RenderPage,
    responses=declare(*READ, 422),
)
def list_renders(
    request: Request,
    response: Response,
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
    follow ``next`` or the Link header (None at the end). A page may hold fewer than
    ``limit`` where few renders match: its cost is bounded, not the job's size."""
    state = status.value if status else None
    info, page = renders_page(request, who, job_id, state, style, size, content, limit, after)
    query = {"status": state, "style": style, "size": size, "content": content, "limit": limit}
    response.headers.update(next_link(request, page.next, **query))
    base = base_of(request)
    return {
        "job": info.job_id,
        "renders": [render_record(info, r, s, base) for r, s in page.renders],
        "next": page.next,
    }


@router.get(
    "/jobs/{job_id}/renders/{render_id}",
    summary="One render",
    response_model=models.RenderDetail,
    responses=declare(*READ),
)
def get_render(request: Request, who: TeamDep, job_id: str, render_id: str) -> dict[str, Any]:
    found = render_of(request, who, job_id, render_id)
    return render_detail(web(request).store, *found, base_of(request))


def output_of(request: Request, who: Any, job_id: str, render_id: str, how: str) -> Any:
    """(the job, the render, what ``Outputs.<how>`` made of its output); 404 while none."""
    info, render, _ = render_of(request, who, job_id, render_id)
    made = getattr(web(request).outputs, how)(info.location, render.key)
    if made is None:
        raise ApiError("not-found", "no output (yet) for this render")
    return info, render, made


@router.get(
    "/jobs/{job_id}/renders/{render_id}/thumbnail",
    summary="A render's thumbnail (JPEG, made once per output version)",
    response_class=Response,
    responses={
        200: {"content": {"image/jpeg": BINARY}},
        304: {"description": "The copy the browser has is current"},
        **declare(*READ, 422),
    },
)
def thumbnail(request: Request, who: TeamDep, job_id: str, render_id: str) -> Response:
    _, _, (path, facts) = output_of(request, who, job_id, render_id, "thumbnail")
    headers = PRIVATE | {"ETag": etag_of(facts["version"])}
    if unchanged(request, headers["ETag"]):
        return Response(status_code=304, headers=headers)
    return FileResponse(path, media_type="image/jpeg", headers=headers)


@router.get(
    "/jobs/{job_id}/renders/{render_id}/image",
    summary="A render's output, through the server (?download=1: as a file to save)",
    response_class=Response,
    responses={
        200: {"content": {"image/png": BINARY, "image/jpeg": BINARY, "image/webp": BINARY}},
        304: {"description": "The copy the browser has is current"},
        **declare(*READ),
    },
)
def image(
    request: Request, who: TeamDep, job_id: str, render_id: str, download: bool = False
) -> Response:
    info, render, data = output_of(request, who, job_id, render_id, "read")
    kind = IMAGE_TYPES.get(info.meta.get("format", ""), "application/octet-stream")
    extra = {}
    if download:
        name = render.key.rsplit("/", 1)[-1].replace('"', "")
        extra["Content-Disposition"] = f'attachment; filename="{name}"'
    return versioned(request, data, kind, **extra)
