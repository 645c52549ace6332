"""Errors as RFC 9457 problem details (``application/problem+json``), each with a stable code.

Every error the API sends has the same shape: ``type`` (``urn:stylebatch:problem:<code>``),
``title``, ``status``, ``detail``, ``instance`` (the request's path) and ``code``; a refused
manifest adds ``problems`` (every problem with its path). Clients branch on ``code`` (or
``type``), never on ``detail``, which is for people. docs/web.md lists the codes.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

MEDIA_TYPE = "application/problem+json"

# code -> (status, title): the catalogue (docs/web.md)
CODES: dict[str, tuple[int, str]] = {
    "unauthorized": (401, "A valid token or session is needed"),
    "forbidden": (403, "Not allowed"),
    "cross-site": (403, "Refused from another site"),
    "not-found": (404, "Not found"),
    "not-acceptable": (406, "No representation in that format"),
    "conflict": (409, "Conflicts with the current state"),
    "in-progress": (409, "Another request is doing this now"),
    "stale": (409, "Decided meanwhile by another reviewer"),
    "no-output": (409, "The render has no output to review yet"),
    "too-large": (413, "Body too large"),
    "invalid-request": (422, "Invalid request"),
    "invalid-manifest": (422, "Invalid manifest"),
    "output-refused": (422, "Output refused"),
    "preflight-failed": (422, "Preflight failed"),
    "idempotency-key-reused": (422, "Idempotency key reused with another body"),
    "rate-limited": (429, "Too many requests"),
    "internal": (500, "Internal error"),
    "unavailable": (503, "A service the server needs is unavailable"),
}


class ProblemItem(BaseModel):
    where: str = Field(description="The path inside the manifest or request ('' for the whole)")
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details, with the stable ``code`` and, for a refused manifest,
    ``problems``."""

    type: str = Field(description="urn:stylebatch:problem:<code>")
    title: str
    status: int
    detail: str
    instance: str
    code: str
    problems: list[ProblemItem] | None = None
    service: str | None = Field(None, description="For 503: which (Redis or S3)")


class Unavailable(Exception):
    """A service the server needs is away: answered 503, naming it."""

    def __init__(self, service: str, detail: str):
        super().__init__(f"{service} is unavailable: {detail}")
        self.service = service


class ApiError(Exception):
    """An error answered as a problem: ``code`` from CODES, ``detail`` for people."""

    def __init__(
        self,
        code: str,
        detail: str,
        headers: dict[str, str] | None = None,
        status: int | None = None,
        **extra: Any,
    ):
        super().__init__(detail)
        self.code, self.detail, self.headers, self.extra = code, detail, headers or {}, extra
        self.status = status or CODES[code][0]


def problem(
    code: str,
    detail: str,
    instance: str,
    status: int | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    status = status or CODES[code][0]
    body = {
        "type": f"urn:stylebatch:problem:{code}",
        "title": CODES[code][1],
        "status": status,
        "detail": str(detail),
        "instance": instance,
        "code": code,
        **{k: v for k, v in extra.items() if v is not None},
    }
    return JSONResponse(body, status, headers=headers, media_type=MEDIA_TYPE)


def code_for(status: int) -> str:
    """The code of a bare HTTP error (Starlette's own 404 or 405, say)."""
    for code, (s, _) in CODES.items():
        if s == status:
            return code
    return "invalid-request" if 400 <= status < 500 else "internal"


# Declared on the operations (OpenAPI): every status an operation can answer with a problem.
DESCRIPTIONS = {
    401: "No valid token or session",
    403: "The session's anti-forgery value is missing or wrong",
    404: "No such job or render, or not this team's",
    406: "Not available in that format",
    409: "Conflicts with the job's state or another request",
    413: "Body over STYLEBATCH_WEB_MAX_BODY",
    422: "Invalid request or manifest: every problem with its path",
    429: "Over the team's rate (RateLimit and Retry-After headers)",
    503: "Redis or S3 unavailable (named in `service`)",
}
SCHEMA_REF = {"$ref": "#/components/schemas/Problem"}


def declare(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these statuses, each a problem."""
    return {
        s: {"description": DESCRIPTIONS[s], "content": {MEDIA_TYPE: {"schema": SCHEMA_REF}}}
        for s in statuses
    }


READ = (401, 404, 429, 503)  # what any authenticated read can answer
WRITE = (401, 403, 404, 409, 413, 429, 503)  # and a change
