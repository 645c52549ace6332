"""The web front (`stylebatch serve`, docs/web.md): one FastAPI app with the JSON API
(scheduler/web/routes, under /v1, OpenAPI at /openapi.json) and the pages
(scheduler/web/pages.py). It never imports torch.

Faults: every error is a problem (RFC 9457, scheduler/web/problems.py) with a stable code:
Redis or S3 away is a 503 that names which (the server keeps no state of its own and answers
again when they return); a bad body, an unknown job or render, another team's job are 4xx;
anything else unexpected is a 500 with no traceback shown. Bodies are limited to
STYLEBATCH_WEB_MAX_BODY (413). Its request metrics are at /metrics (basic auth as the
fleet's, STYLEBATCH_METRICS_AUTH).

The unversioned API paths (/jobs, ...) are aliases of /v1's, kept for clients written before
the version prefix; they are not in the OpenAPI document (docs/web.md lists them)."""

from __future__ import annotations

import base64
import contextlib
import hmac
import logging
import time
from pathlib import Path
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.errors import TransientError
from common.settings import Settings
from common.state import JobStore
from common.teams import load_teams
from scheduler.web import models, pages, review_pages, sessions, templating
from scheduler.web.context import Web
from scheduler.web.deps import rate_headers
from scheduler.web.problems import MEDIA_TYPE, ApiError, Problem, Unavailable, code_for, problem
from scheduler.web.routes import health, jobs, renders, reviews, schedules
from scheduler.web.webhooks import router as webhooks

log = logging.getLogger("stylebatch.web")
HERE = Path(__file__).parent
API = (jobs.router, renders.router, reviews.router, schedules.router)


class BodyLimit:
    """Bodies past ``limit`` bytes are refused with 413 as they stream in, whatever reads them
    (the API's manifest, a page's form), with or without a Content-Length. The reader's error
    may reach here wrapped (an exception group of the middleware's task group): the answer
    is the 413 whenever the body went past the limit and nothing was sent yet. A reader that
    turns the error into an answer of its own (FastAPI's ``Form()`` answers 400 for a form it
    could not parse) has that answer replaced by the 413 as it starts."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        seen, started, replaced = 0, False, False

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise TooBig(self.limit)
            return message

        async def sending(message: dict) -> None:
            nonlocal started, replaced
            if replaced:
                return  # the reader's own answer, replaced by the 413
            if message["type"] == "http.response.start" and not started and seen > self.limit:
                started = replaced = True
                await too_big(scope, self.limit)(scope, receive, send)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, sending)
        except Exception:
            if seen <= self.limit or started:
                raise
            await too_big(scope, self.limit)(scope, receive, send)


class TooBig(Exception):
    """A body past the limit (BodyLimit)."""


def too_big(scope: dict, limit: int) -> Response:
    detail = f"body over {limit} bytes (STYLEBATCH_WEB_MAX_BODY)"
    return problem("too-large", detail, scope.get("path", ""))


def _route(request: Request) -> str:
    """The route's template (never the raw path: job ids would make unbounded labels)."""
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def secure_cookies(settings: Settings, bind: str | None) -> bool:
    """Whether the session cookie is Secure (STYLEBATCH_WEB_SECURE_COOKIES): "1"/"true" or
    "0"/"false" as set; unset, Secure unless `serve` is bound to loopback (where a browser
    reaches it over plain HTTP on the same machine). Behind a TLS ingress, uvicorn does not
    trust the ingress's X-Forwarded-Proto (FORWARDED_ALLOW_IPS is loopback by default), so
    the request's own scheme cannot tell."""
    value = settings.web_secure_cookies
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    return bind is not None and bind not in LOOPBACK


def create_app(
    settings: Settings | None = None, store: JobStore | None = None, bind: str | None = None
) -> FastAPI:
    """The app; ``bind``: the address `serve` listens on (None in tests: cookies are
    Secure only over HTTPS or where STYLEBATCH_WEB_SECURE_COOKIES says so)."""
    settings = settings or Settings.from_env()
    teams = load_teams(settings.web_teams, settings)
    thumbs = Path(settings.web_thumbnails or settings.cache_dir / "thumbnails")
    app = FastAPI(
        title="stylebatch",
        summary="Submit and steer style-transfer jobs; read their renders.",
        version="1",
        docs_url=None,  # Swagger UI loads its scripts from a CDN, which the CSP refuses
        redoc_url=None,
    )
    app.state.web = Web(
        settings,
        teams,
        store or JobStore.from_settings(settings, retries=1),
        thumbs,
        secure_cookies(settings, bind),
    )
    registry = CollectorRegistry()
    requests = Counter(
        "stylebatch_web_requests",
        "Web requests answered, by route template, method and status",
        ["route", "method", "status"],
        registry=registry,
    )
    seconds = Histogram(
        "stylebatch_web_request_seconds",
        "Time to answer a web request, by route template",
        ["route"],
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        registry=registry,
    )

    @app.middleware("http")
    async def measured(request: Request, call_next: Any) -> Response:
        length = request.headers.get("content-length", "")
        limit = settings.web_max_body
        if length and (not length.isdigit() or int(length) > limit):  # refused unread
            response: Response = too_big(request.scope, limit)
        else:
            started = time.perf_counter()
            response = await call_next(request)
            seconds.labels(_route(request)).observe(time.perf_counter() - started)
        requests.labels(_route(request), request.method, str(response.status_code)).inc()
        taken = getattr(request.state, "rate", None)
        if taken is not None:
            for name, value in rate_headers(taken).items():
                response.headers.setdefault(name, value)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "frame-ancestors 'none'; form-action 'self'",
        )
        return response

    def wants_html(request: Request) -> bool:
        return request.url.path.startswith("/ui")

    def answer(request: Request, exc: ApiError) -> Response:
        if wants_html(request):
            if exc.status == 401:
                return sessions.login_page(request, 401, exc.detail)
            return templating.page(
                request, "error.html", exc.status, title=exc.status, message=exc.detail,
                problems=exc.extra.get("problems"),
            )  # fmt: skip
        return problem(exc.code, exc.detail, request.url.path, exc.status, exc.headers, **exc.extra)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> Response:
        return answer(request, exc)

    def unavailable(request: Request, service: str, detail: str) -> Response:
        message = f"{service} is unavailable: {detail}"
        log.warning("503: %s", message)
        return answer(
            request, ApiError("unavailable", message, {"Retry-After": "5"}, service=service)
        )

    @app.exception_handler(Unavailable)
    async def on_unavailable(request: Request, exc: Unavailable) -> Response:
        return unavailable(request, exc.service, str(exc).split(": ", 1)[-1])

    async def on_redis(request: Request, exc: redis.RedisError) -> Response:
        return unavailable(request, "Redis", f"{type(exc).__name__}: {exc}")

    # Redis away, read-only, out of memory (OOM), refusing writes (MISCONF), or a create whose
    # staging was lost (common/state.py's Incomplete): 503, naming Redis; submit again.
    app.add_exception_handler(redis.RedisError, on_redis)

    @app.exception_handler(TransientError)
    async def on_transient(request: Request, exc: TransientError) -> Response:
        return unavailable(request, "S3", str(exc))

    try:
        from kombu.exceptions import OperationalError

        @app.exception_handler(OperationalError)
        async def on_broker(request: Request, exc: OperationalError) -> Response:
            return unavailable(request, "Redis", f"the broker: {exc}")
    except ImportError:  # pragma: no cover - celery[redis] brings kombu
        pass

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> Response:
        code = code_for(exc.status_code)
        error = ApiError(code, str(exc.detail), dict(exc.headers or {}), exc.status_code)
        return answer(request, error)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> Response:
        found = [
            {"where": ".".join(map(str, e.get("loc", ()))), "message": e.get("msg", "")}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{p['where']}: {p['message']}" for p in found) or "invalid request"
        return answer(request, ApiError("invalid-request", detail, problems=found))

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error answering %s %s", request.method, request.url.path)
        return answer(request, ApiError("internal", "internal error (logged by the server)"))

    app.add_middleware(BodyLimit, limit=settings.web_max_body)
    for router in API:
        app.include_router(router, prefix="/v1")
        app.include_router(router, include_in_schema=False)  # the unversioned aliases
    app.include_router(health.router)
    app.include_router(sessions.router)
    app.include_router(review_pages.router)  # before pages' /jobs/{job}/{action}
    app.include_router(pages.router)
    app.webhooks.include_router(webhooks)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.get("/", include_in_schema=False)
    def root() -> Response:
        return RedirectResponse("/ui", status_code=303)

    auth = settings.metrics_auth
    expected = "Basic " + base64.b64encode(auth.encode()).decode() if auth else ""

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        given = request.headers.get("authorization", "")
        if expected and not hmac.compare_digest(given.encode(), expected.encode()):
            raise ApiError("unauthorized", "authentication required", {"WWW-Authenticate": "Basic"})
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    def close_planners() -> None:
        if "planners" in vars(app.state.web):  # started: their processes end with the server
            app.state.web.planners.close()

    app.router.on_shutdown.append(close_planners)
    app.openapi = lambda: openapi(app)  # type: ignore[method-assign]
    return app


def openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with what it cannot say by itself: errors are problems (its own
    422 schema, which this server never sends, replaced), and the schemas referenced by hand."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        routes=app.routes,
        webhooks=app.webhooks.routes,
    )
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for model in (Problem, models.Plan):
        found = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in found.pop("$defs", {}).items():
            schemas.setdefault(name, sub)
        schemas[model.__name__] = found
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    ref = {"$ref": "#/components/schemas/Problem"}
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if "422" in responses:
                responses["422"] = {
                    "description": "Invalid request or manifest: every problem with its path",
                    "content": {MEDIA_TYPE: {"schema": ref}},
                }
    app.openapi_schema = doc
    return doc


def _few_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread that allocates its own malloc arena (up to 8 per core), and
    freed memory stays in each: an export's fetch threads and Starlette's thread pool would
    grow the server's resident memory with every thread that ever ran one. Two arenas keep
    it near what is live (mallopt M_ARENA_MAX, set before those threads start; elsewhere
    than glibc, nothing)."""
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(-8, arenas)


def serve(settings: Settings, bind: str, port: int) -> None:
    import threading

    import uvicorn

    _few_malloc_arenas()
    app = create_app(settings, bind=bind)
    threading.Thread(target=app.state.web.planners.warm, daemon=True).start()
    uvicorn.run(
        app,
        host=bind,
        port=port,
        log_level="info",
        proxy_headers=True,
        server_header=False,
        limit_concurrency=200,
    )
