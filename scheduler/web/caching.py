"""How the API's images are cached by browsers: a render's URLs are stable while its output
may be rendered again (retry, --force), so a browser keeps what it fetched but asks again each
time, and gets 304 while it is the same."""

from __future__ import annotations

import hashlib

from fastapi import Request, Response

PRIVATE = {"Cache-Control": "private, no-cache"}


def etag_of(version: str) -> str:
    return '"' + version.replace('"', "").replace("\\", "") + '"'


def unchanged(request: Request, etag: str) -> bool:
    """The browser's copy (If-None-Match) is this version."""
    given = request.headers.get("if-none-match", "")
    tags = {t.strip().removeprefix("W/") for t in given.split(",")}
    return etag in tags or "*" in tags


def versioned(request: Request, data: bytes, media_type: str, **headers: str) -> Response:
    """Bytes read whole (an output, a contact sheet), their digest the ETag."""
    etag = etag_of(hashlib.sha256(data).hexdigest()[:32])
    headers = PRIVATE | {"ETag": etag} | headers
    if unchanged(request, etag):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=media_type, headers=headers)
