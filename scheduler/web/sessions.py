"""Logging in and out of the pages.

A session is a random id in an HttpOnly, SameSite=Strict cookie, mapped to its team in Redis
(common/state.py keeps only the id's digest) for STYLEBATCH_WEB_SESSION_SECONDS; logging out
ends it at once, everywhere. The token itself never becomes a cookie.

The login form cannot be forged from another site (a forged login would put the victim in the
attacker's team, where they would submit their work): its POST must come from this origin
(``Origin`` and ``Sec-Fetch-Site``, where the browser sends them) and carry the pre-login
anti-forgery value, a random value in a cookie of its own that the form repeats, which another
site can neither read nor make the browser send (SameSite=Strict).
"""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from scheduler.web.deps import SESSION_COOKIE, TeamDep, session_of, web
from scheduler.web.problems import ApiError
from scheduler.web.templating import page

LOGIN_COOKIE = "sb_login"
LOGIN_SECONDS = 3600  # a login form stays good this long
router = APIRouter(prefix="/ui", include_in_schema=False)


def safe_next(target: str | None) -> str:
    """Where to land after login: a page of this server's, never another site."""
    if not target or not target.startswith("/ui") or target.startswith("//") or "\\" in target:
        return "/ui"
    return target


def login_page(request: Request, status: int = 200, error: str = "", next_: str = "") -> Response:
    """The login form, with a fresh pre-login anti-forgery value (its cookie and its field)."""
    value = secrets.token_urlsafe(24)
    target = safe_next(next_ or (request.url.path if request.method == "GET" else ""))
    response = page(
        request, "login.html", status, error=error, login_csrf=value, next=target, team=None
    )
    response.set_cookie(  # Secure only over HTTPS seen here: it guards a form, not a session
        LOGIN_COOKIE, value, max_age=LOGIN_SECONDS, httponly=True, samesite="strict",
        secure=request.url.scheme == "https", path="/ui",
    )  # fmt: skip
    return response


def secure(request: Request) -> bool:
    return web(request).secure_cookies or request.url.scheme == "https"


def same_origin(request: Request) -> bool:
    """The POST came from a page of this server: ``Sec-Fetch-Site`` (sent by every current
    browser) and ``Origin`` agree, where present. A client that sends neither is no browser
    led by another site."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is not None:
        if origin == "null":
            return False
        return urlsplit(origin).netloc.lower() == request.headers.get("host", "").lower()
    return True


@router.get("/login")
def login_form(request: Request, next: str = "") -> Response:
    return login_page(request, next_=next)


@router.post("/login")
def login(
    request: Request,
    token: Annotated[str, Form(max_length=500)] = "",
    login_csrf: Annotated[str, Form(max_length=100)] = "",
    next: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    if not same_origin(request):
        raise ApiError("cross-site", "a login must come from this site's own login page")
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not hmac.compare_digest(expected.encode(), login_csrf.encode()):
        return login_page(request, 403, "this login form expired; log in again", next)
    ctx = web(request)
    from common.teams import authenticate

    found = authenticate(ctx.teams, token)
    if found is None:
        return login_page(request, 401, "unknown token", next)
    old = session_of(request)
    if old:
        ctx.store.end_session(old)  # a new login never keeps the old session alive
    session = ctx.store.open_session(found.name, ctx.settings.web_session_seconds)
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE, session, max_age=ctx.settings.web_session_seconds, httponly=True,
        samesite="strict", secure=secure(request), path="/",
    )  # fmt: skip
    response.delete_cookie(LOGIN_COOKIE, path="/ui")
    return response


@router.post("/logout")
def logout(request: Request, who: TeamDep) -> Response:
    web(request).store.end_session(session_of(request))
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
