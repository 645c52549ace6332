"""What the API and the pages share: the server's context (settings, teams, the job store, the
outputs), who is asking (a bearer token, or the session cookie a login sets, with the forms'
anti-forgery check), and a team's view of a job (404 for another team's, as for none)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request

from common.access import under
from common.errors import StorageError, TransientError
from common.manifest import _NAME
from common.settings import Settings
from common.state import JobInfo, JobStore
from common.storage import s3_client, storage_error
from common.uris import Location, join_key
from scheduler.web.teams import Team, authenticate, csrf_token

COOKIE = "sb_token"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
THUMB_SIDE = 240  # pixels, the long side of a gallery thumbnail
THUMB_QUALITY = 80


class Unavailable(Exception):
    """A service the server needs is away: answered 503, naming it."""

    def __init__(self, service: str, detail: str):
        super().__init__(f"{service} is unavailable: {detail}")
        self.service = service


@dataclass
class Web:
    settings: Settings
    teams: dict[str, Team]
    store: JobStore
    thumbnails: Path
    secure_cookies: bool = False  # the session cookie's Secure flag (app.py)

    @cached_property
    def celery(self) -> Any:
        from common.queue import make_app

        return make_app(self.settings)

    @cached_property
    def outputs(self) -> Outputs:
        return Outputs(self.settings, self.thumbnails)


def web(request: Request) -> Web:
    return request.app.state.web


def token_of(request: Request) -> tuple[str | None, bool]:
    """(token, whether it came from the session cookie)."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip(), False
    cookie = request.cookies.get(COOKIE)
    return (cookie, True) if cookie else (None, False)


async def team(request: Request) -> Team:
    """The asking team: 401 without a valid token. A form or request authenticated by the
    session cookie must also carry the session's anti-forgery value (form field ``csrf`` or
    header X-CSRF-Token) on anything but GET: a cross-site page can make the browser send the
    cookie (were it not SameSite=Strict) but cannot read the value. A bearer token is never
    sent by a browser on its own, so it needs none."""
    token, from_cookie = token_of(request)
    found = authenticate(web(request).teams, token)
    if found is None:
        raise HTTPException(
            401,
            "a valid token is needed (Authorization: Bearer TOKEN)",
            {"WWW-Authenticate": "Bearer"},
        )
    if from_cookie and request.method not in SAFE_METHODS:
        given = request.headers.get(CSRF_HEADER, "")
        if not given and "form" in request.headers.get("content-type", ""):
            await request.body()  # kept: the endpoint reads it again (as a form or not)
            given = str((await request.form()).get("csrf", ""))
        if not given or not _same(given, csrf_token(token or "")):
            raise HTTPException(403, "missing or wrong anti-forgery token (csrf)")
    return found


def _same(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())


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
        raise HTTPException(404, f"no such job: {job_id[:200]}")
    if info.total and "facets" not in info.meta:  # recorded before the render index existed
        store.index_recorded(job_id)
        info = store.get(job_id) or info
    return info


def facets(info: JobInfo) -> dict[str, Any]:
    try:
        return json.loads(info.meta.get("facets") or "{}")
    except ValueError:
        return {}


class Outputs:
    """Reads a job's outputs for the pages (S3 or local), and the gallery's thumbnails: made
    once per output version (S3 ETag, or a local file's size and mtime), from the output
    itself, and kept on the server's disk, so a page view never fetches full-size outputs
    again. A render's output is read whole once, when its first thumbnail is made."""

    def __init__(self, settings: Settings, folder: Path):
        self.settings, self.folder = settings, folder
        self.client = s3_client(settings, attempts=2, timeout=10)
        self.cap = settings.web_thumbnail_cache_bytes  # STYLEBATCH_WEB_THUMBNAIL_CACHE_BYTES
        self._held: int | None = None  # bytes in the folder, counted once, then kept up
        self._lock = threading.Lock()

    def _s3(self, location: Location, key: str) -> tuple[str, str]:
        return location.root, join_key(location.prefix, key)

    def version(self, location: Location, key: str) -> str | None:
        """The output's version, None where it is not (yet) there."""
        if location.scheme != "s3":
            try:
                stat = (Path(location.root) / key).stat()
            except OSError:
                return None
            return f"{stat.st_size}-{stat.st_mtime_ns}"
        etag = self._ask(location, key, self.client.head_object, lambda r: r["ETag"])
        return None if etag is None else etag.strip('"')

    def read(self, location: Location, key: str) -> bytes | None:
        if location.scheme != "s3":
            try:
                return (Path(location.root) / key).read_bytes()
            except OSError:
                return None
        return self._ask(location, key, self.client.get_object, lambda r: r["Body"].read())

    def _ask(self, location: Location, key: str, call: Any, then: Any) -> Any:
        """``then`` of S3's answer to ``call`` on the object; None where it is not there; S3
        away is Unavailable (503), a refusal a 404 that says so."""
        from botocore.exceptions import ClientError

        bucket, full = self._s3(location, key)
        try:
            return then(call(Bucket=bucket, Key=full))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise _unavailable(storage_error(exc, bucket, full)) from None
        except Exception as exc:
            raise _unavailable(storage_error(exc, bucket, full)) from None

    def thumbnail(self, location: Location, key: str) -> tuple[Path, dict[str, Any]] | None:
        """(JPEG file, what was learnt from the output: size, content credentials), or None
        where there is no output."""
        version = self.version(location, key)
        if version is None:
            return None
        name = hashlib.sha256(f"{location.uri_of(key)}\0{version}".encode()).hexdigest()
        path = self.folder / name[:2] / f"{name}.jpg"
        facts = path.with_suffix(".json")
        if path.exists() and facts.exists():
            try:
                os.utime(path)  # used: the last to go when the cache is pruned
                return path, json.loads(facts.read_text())
            except (OSError, ValueError):
                pass  # pruned (or half written) meanwhile: made again
        data = self.read(location, key)
        if data is None:
            return None
        from common.imageio import decode, fit_long_side

        try:
            img = decode(data, key, self.settings.max_input_pixels)
        except Exception as exc:  # not an image we read: no thumbnail, said plainly
            raise HTTPException(422, f"output cannot be read as an image: {exc}") from None
        info = {
            "width": img.width,
            "height": img.height,
            "bytes": len(data),
            "credentials": b"jumb" in data and b"c2pa" in data,  # a C2PA manifest store
            "version": version,
        }
        buf = io.BytesIO()
        fit_long_side(img, THUMB_SIDE).save(buf, "JPEG", quality=THUMB_QUALITY)
        path.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        for target, body in ((facts, json.dumps(info).encode()), (path, buf.getvalue())):
            temp = target.with_name(f".{target.name}.{secrets.token_hex(8)}")  # this thread's
            temp.write_bytes(body)
            temp.replace(target)
            written += len(body)
        self._grew(written)
        return path, info

    def _grew(self, added: int) -> None:
        """Keep the folder under ``cap`` bytes: counted once (a walk of the folder), then
        kept up as thumbnails are written; past the cap, the least recently used thumbnails
        go (their last use is their file's mtime) until it holds at most 80% of the cap."""
        with self._lock:
            if self._held is None:
                self._held = sum(size for _, size, _ in self._files())
            else:
                self._held += added
            if self._held <= self.cap:
                return
            files = sorted(self._files(), key=lambda f: f[2])  # oldest use first
            held = sum(size for _, size, _ in files)
            for jpeg, _, _ in files:
                if held <= self.cap * 0.8:
                    break
                for gone in (jpeg, jpeg.with_suffix(".json")):
                    try:
                        held -= gone.stat().st_size
                        gone.unlink()
                    except OSError:
                        pass
            self._held = held

    def _files(self) -> list[tuple[Path, int, int]]:
        """(thumbnail, its bytes with its facts, its last use) of every thumbnail kept."""
        found = []
        for jpeg in self.folder.glob("*/*.jpg"):
            try:
                stat = jpeg.stat()
                facts = jpeg.with_suffix(".json")
                size = stat.st_size + (facts.stat().st_size if facts.exists() else 0)
            except OSError:
                continue
            found.append((jpeg, size, stat.st_mtime_ns))
        return found


def _unavailable(error: StorageError) -> Exception:
    if isinstance(error, TransientError):
        return Unavailable("S3", str(error))
    return HTTPException(404, f"output not readable: {error}")
