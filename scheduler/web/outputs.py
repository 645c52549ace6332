"""A job's outputs as the pages and the API read them (S3 or local), and the gallery's
thumbnails: made once per output version (S3 ETag, or a local file's size and mtime), from the
output itself, and kept on the server's disk, so a page view never fetches full-size outputs
again. A render's output is read whole once, when its first thumbnail is made."""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import StorageError, TransientError
from common.settings import Settings
from common.storage import s3_client, storage_error
from common.uris import Location, join_key
from scheduler.web.problems import ApiError, Unavailable

THUMB_SIDE = 240  # pixels, the long side of a gallery thumbnail
THUMB_QUALITY = 80


class Outputs:
    """Reads outputs, and makes and keeps their thumbnails (the module's docstring)."""

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

    def stream(self, location: Location, key: str, chunk: int = 1 << 20) -> Streamed | None:
        """The output's bytes a chunk at a time (its size known first), never whole in
        memory; None where it is not there. The caller closes it."""
        if location.scheme != "s3":
            try:
                handle = (Path(location.root) / key).open("rb")
            except OSError:
                return None
            size = os.fstat(handle.fileno()).st_size
            return Streamed(size, iter(lambda: handle.read(chunk), b""), handle.close)
        answer = self._ask(location, key, self.client.get_object, lambda r: r)
        if answer is None:
            return None
        body = answer["Body"]
        return Streamed(int(answer["ContentLength"]), body.iter_chunks(chunk), body.close)

    def read_uri(self, uri: str) -> bytes | None:
        """An input (a render's content or mask) by its URI, as the job recorded it."""
        location, key = _split(uri)
        return self.read(location, key)

    def thumbnail_uri(self, uri: str) -> tuple[Path, dict[str, Any]] | None:
        location, key = _split(uri)
        return self.thumbnail(location, key)

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
            raise ApiError("invalid-request", f"output cannot be read as an image: {exc}") from None
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


@dataclass
class Streamed:
    size: int
    chunks: Iterator[bytes]
    close: Callable[[], None]


def _split(uri: str) -> tuple[Location, str]:
    """A recorded input URI as (location, key): s3://bucket/key, or a local file."""
    if uri.startswith("s3://"):
        bucket, _, key = uri[len("s3://") :].partition("/")
        return Location("s3", bucket, ""), key
    path = Path(uri)
    return Location("file", str(path.parent), ""), path.name


def _unavailable(error: StorageError) -> Exception:
    if isinstance(error, TransientError):
        return Unavailable("S3", str(error))
    return ApiError("not-found", f"output not readable: {error}")
