"""A bounded disk cache of S3 inputs on a worker: a campaign's few style images are fetched
once per machine, not once per render. Entries are keyed by URI and ETag, so a replaced
object is fetched again; the least recently used go first when the cache is over budget."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from common.settings import Settings
from common.storage import atomic_write, read_input, s3_client
from common.uris import is_s3, parse_s3


class InputCache:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = Path(settings.cache_dir) / "inputs"
        self.budget = settings.input_cache_bytes

    def read(self, uri: str) -> bytes:
        if not is_s3(uri):
            return read_input(uri, self.settings)
        bucket, key = parse_s3(uri)
        try:
            head = s3_client(self.settings).head_object(Bucket=bucket, Key=key)
        except Exception:
            return read_input(uri, self.settings)  # names the problem (missing, denied...)
        etag = head.get("ETag", "").strip('"')
        path = self.root / hashlib.sha256(f"{uri}\0{etag}".encode()).hexdigest()
        try:
            data = path.read_bytes()
            if self._intact(data, etag, head.get("ContentLength")):
                os.utime(path)
                return data
        except OSError:
            pass  # missing or unreadable: fetch again
        data = read_input(uri, self.settings)
        try:
            atomic_write(path, data)
            self._evict()
        except OSError:
            pass  # a full or broken cache disk must not fail the render
        return data

    @staticmethod
    def _intact(data: bytes, etag: str, length: int | None) -> bool:
        """A single-part upload's ETag is the MD5 of its bytes: check it where it is one."""
        if length is not None and len(data) != length:
            return False
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
