"""Health: liveness (the process answers) and readiness (Redis and S3 answer). No token."""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from scheduler.web import models
from scheduler.web.deps import web

router = APIRouter(tags=["health"])


@router.get(
    "/ready",
    summary="Readiness: Redis and S3 answer",
    response_model=models.Readiness,
    responses={503: {"model": models.Readiness, "description": "One of them does not"}},
)
def ready(request: Request) -> JSONResponse:
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


@router.get("/healthz", summary="Liveness: the process answers", response_model=models.Health)
def healthz() -> dict[str, str]:
    return {"status": "ok"}
