"""The pages' rendering: Jinja2 over scheduler/web/templates, autoescaped (nothing read from
job state reaches the browser as HTML), never stored by the browser (a page carries the
session's anti-forgery value), with the notice an action left for the next page."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape

from scheduler import jobview
from scheduler.web.deps import csrf_token, session_of

HERE = Path(__file__).parent
env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
)
templates = Jinja2Templates(env=env)
env.filters["duration"] = jobview.duration


def when(stamp: float | None) -> str:
    """A time as the pages show it: UTC, to the minute ("-" for none)."""
    from datetime import UTC, datetime

    if stamp is None:
        return "-"
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M")


env.filters["when"] = when


def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    session = session_of(request)
    notice = unquote(request.cookies.get("sb_notice", ""))
    context.setdefault("team", None)
    context.setdefault("notice_refused", notice.startswith("!"))
    context.setdefault("notice", notice.removeprefix("!"))
    csrf = csrf_token(session) if session else ""
    response = templates.TemplateResponse(
        request, name, {"csrf": csrf, **context}, status_code=status
    )
    response.headers["Cache-Control"] = "no-store"  # it holds the session's anti-forgery value
    if notice:
        response.delete_cookie("sb_notice", path="/ui")
    return response


def flash(response: Response, message: str, refused: bool = False) -> Response:
    """A message for the next page shown (an action's result; ``refused``: shown as one
    that did not go through): a short-lived cookie that the page reads once
    (``pages.page``); never a query string another site could write."""
    text = ("!" if refused else "") + message[:400]
    response.set_cookie(
        "sb_notice", quote(text), max_age=60, httponly=True, samesite="strict", path="/ui",
    )  # fmt: skip
    return response
