"""What every route depends on: the server's context, who is asking (a bearer token, or a
session cookie with the forms' anti-forgery value), the team's rate, and a team's view of a
job (404 for another team's, as for none)."""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from common.access import under
from common.manifest import _NAME
from common.state import JobInfo
from common.teams import Team, authenticate
from scheduler.web.context import Web
from scheduler.web.problems import ApiError

SESSION_COOKIE = "sb_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def web(request: Request) -> Web:
    return request.app.state.web


def csrf_token(session: str) -> str:
    """The forms' anti-forgery value of a session: derived from its id, which only the
    browser holding the (HttpOnly) cookie has, so a cross-site page cannot send it; any
    replica can check it."""
    return hmac.new(session.encode(), b"stylebatch-web-csrf", hashlib.sha256).hexdigest()


bearer = HTTPBearer(auto_error=False, description="A team's token (STYLEBATCH_WEB_TEAMS)")
cookie = APIKeyCookie(
    name=SESSION_COOKIE, auto_error=False, description="A session made by the login page"
)


def session_of(request: Request) -> str:
    return request.cookies.get(SESSION_COOKIE, "")


async def team(
    request: Request,
    token: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    session: Annotated[str | None, Depends(cookie)],
) -> Team:
    """The asking team: 401 without a valid token or live session. A request made with the
    session cookie must also carry its anti-forgery value (form field ``csrf`` or header
    X-CSRF-Token) on anything but GET. A bearer token is never sent by a browser on its
    own, so it needs none. The team's rate is taken here too (``rate``)."""
    ctx = web(request)
    found = None
    if token is not None:
        found = authenticate(ctx.teams, token.credentials)
    elif session:
        name = ctx.store.session_team(session)
        found = ctx.teams.get(name) if name else None
    if found is None:
        raise ApiError(
            "unauthorized",
            "a valid token is needed (Authorization: Bearer TOKEN), or a session (/ui/login)",
            {"WWW-Authenticate": "Bearer"},
        )
    if token is None and request.method not in SAFE_METHODS:
        given = request.headers.get(CSRF_HEADER, "")
        if not given and "form" in request.headers.get("content-type", ""):
            await request.body()  # kept: the endpoint reads it again (as a form or not)
            given = str((await request.form()).get("csrf", ""))
        if not given or not hmac.compare_digest(given.encode(), csrf_token(session).encode()):
            raise ApiError("forbidden", "missing or wrong anti-forgery token (csrf)")
    rate(request, found, "write" if request.method not in SAFE_METHODS else "read")
    return found


TeamDep = Annotated[Team, Depends(team)]


def rate(request: Request, who: Team, kind: str) -> None:
    """Take one request from the team's rate (per team, across replicas: common/lua/rate.lua);
    429 past it. The RateLimit headers of the answer are set from ``request.state.rate``."""
    s = web(request).settings
    if kind == "submit":
        interval, burst = 60_000 / max(1e-6, s.web_submits_per_minute), s.web_submit_burst
    else:
        interval, burst = 1000 / max(1e-6, s.web_requests_per_second), s.web_request_burst
    taken = web(request).store.take_rate(who.name, kind, round(interval), burst)
    request.state.rate = taken
    if not taken.allowed:
        wait = max(1, round(taken.retry_after + 0.499))
        raise ApiError(
            "rate-limited",
            f"team {who.name} is over its {kind} rate ({burst} at once); retry in {wait} s",
            {"Retry-After": str(wait), **rate_headers(taken)},
        )


def rate_headers(taken: Any) -> dict[str, str]:
    """IETF RateLimit fields (draft-ietf-httpapi-ratelimit-headers: the combined field, and
    the separate ones of its earlier drafts that most clients read)."""
    reset = max(0, round(taken.reset + 0.499))
    return {
        "RateLimit": f"limit={taken.limit}, remaining={taken.remaining}, reset={reset}",
        "RateLimit-Limit": str(taken.limit),
        "RateLimit-Remaining": str(taken.remaining),
        "RateLimit-Reset": str(reset),
    }


def owns(who: Team, info: JobInfo | None) -> bool:
    """A team's jobs: those it submitted here, and those submitted without a team (the command
    line, beat's slots) that write under its allowed outputs."""
    if info is None:
        return False
    if info.meta.get("team"):
        return who.owns(info)
    return any(under(str(info.location), p) for p in who.allowed_outputs)


# A job id as common/expand.py's job_id makes it: the manifest's name (common/manifest.py),
# the slot's label where it is scheduled, 12 hex digits. Never a ':', so never the name of
# another of the job's keys (its ':index', ':specs', ...), whatever a path holds.
JOB_ID = re.compile(rf"(?:{_NAME.pattern[1:-1]})(?:-\d{{8}}T\d{{6}}Z)?-[0-9a-f]{{12}}")


def job_of(request: Request, who: Team, job_id: str) -> JobInfo:
    """The job, if this team may see it; 404 otherwise (another team's job is no one's, and
    what is no job id is no job: refused before anything is read)."""
    store = web(request).store
    info = store.get(job_id) if JOB_ID.fullmatch(job_id) else None
    if not owns(who, info):
        raise ApiError("not-found", f"no such job: {job_id[:200]}")
    if info.total and "facets" not in info.meta:  # recorded before the render index existed
        store.index_recorded(job_id)
        info = store.get(job_id) or info
    return info


def render_of(request: Request, who: Team, job_id: str, render_id: str) -> tuple[Any, ...]:
    """(the job, the render's spec, its state); 404 where the team's job has no such render."""
    info = job_of(request, who, job_id)
    found = web(request).store.render(info.job_id, render_id) if len(render_id) <= 100 else None
    if found is None:
        raise ApiError("not-found", f"job {info.job_id} has no render {render_id[:100]}")
    return info, *found


def base_of(request: Request) -> str:
    """The API's prefix this request came by: /v1, or '' for the unversioned aliases."""
    return "/v1" if request.url.path.startswith("/v1/") else ""


def next_link(request: Request, cursor: str | None, **query: Any) -> dict[str, str]:
    """The Link header of a page whose next page starts after ``cursor`` (none at the end)."""
    if not cursor:
        return {}
    params = {k: v for k, v in query.items() if v not in (None, "")} | {"after": cursor}
    return {"Link": f'<{request.url.path}?{urlencode(params)}>; rel="next"'}
