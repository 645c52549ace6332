"""A bounded disk cache of S3 inputs on a worker: a campaign's few style images are fetched
once per machine, not once per render. Entries are keyed by URI and content identity (the
ETag the job was planned with), so a replaced object is never served from here; the least
recently used go first when the cache is over budget."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from common.errors import InputError, never_swallowed
from common.settings import Settings
from common.storage import atomic_write, changed, read_input, s3_client
from common.uris import is_s3, parse_s3


class InputCache:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = Path(settings.cache_dir) / "inputs"
        self.budget = settings.input_cache_bytes

    def read(self, uri: str, identity: str = "") -> bytes:
        """The input's bytes; with ``identity`` (common/inputs.py), that content or an
        InputError saying it changed. Without one (a job planned before inputs were
        identified), whatever the object holds now."""
        if not is_s3(uri):
            data = read_input(uri, self.settings)
            if identity.startswith("sha256:"):
                found = "sha256:" + hashlib.sha256(data).hexdigest()[:32]
                if found != identity:
                    raise InputError(changed(uri, identity, found))
            return data
        etag = identity.removeprefix("etag:") if identity.startswith("etag:") else ""
        if not etag:
            bucket, key = parse_s3(uri)
            try:
                head = s3_client(self.settings).head_object(Bucket=bucket, Key=key)
            except Exception as exc:
                never_swallowed(exc)
                return read_input(uri, self.settings)  # names the problem (missing, denied...)
            etag = head.get("ETag", "").strip('"')
        path = self.root / hashlib.sha256(f"{uri}\0{etag}".encode()).hexdigest()
        try:
            data = path.read_bytes()
            if self._intact(data, etag):
                os.utime(path)
                return data
        except OSError:
            pass  # missing or unreadable: fetch again
        data = read_input(uri, self.settings, etag)
        try:
            atomic_write(path, data)
            self._evict()
        except OSError:
            pass  # a full or broken cache disk must not fail the render
        return data

    @staticmethod
    def _intact(data: bytes, etag: str) -> bool:
        """A single-part upload's ETag is the MD5 of its bytes: check it where it is one (a
        multipart ETag names the upload, and the entry was written whole)."""
        if re.fullmatch(r"[0-9a-f]{32}", etag):
            return hashlib.md5(data, usedforsecurity=False).hexdigest() == etag
        return True

    def _evict(self) -> None:
        entries = []
        for path in self.root.glob("*"):
            try:
                stat = path.stat()
            except OSError:
                continue
            entries.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.budget:
                break
            path.unlink(missing_ok=True)
            total -= size
