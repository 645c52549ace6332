"""Where things live: local paths, file:// and s3:// URIs, and output keys that stay inside
their prefix."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class Location:
    """An output or input root: a local directory, or a bucket plus key prefix."""

    scheme: str  # "file" or "s3"
    root: str  # absolute directory, or bucket name
    prefix: str = ""  # s3 key prefix without leading or trailing slash

    def __str__(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.root}/{self.prefix}".rstrip("/")
        return self.root

    def uri_of(self, key: str) -> str:
        if self.scheme == "s3":
            return f"s3://{self.root}/{join_key(self.prefix, key)}"
        return str(Path(self.root, key))


def is_s3(text: str) -> bool:
    return text.startswith("s3://")


def has_dot_segment(path: str) -> bool:
    """Whether a key or URL path has a ``.`` or ``..`` segment, also percent-encoded (once or
    more: ``%2e%2e``, ``%252e``), split at ``/`` or ``\\`` and with ``;params`` dropped
    (``..;``), as some servers and proxies read them."""
    for _ in range(4):
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    return any(part.split(";", 1)[0] in (".", "..") for part in re.split(r"[/\\]", path))


def parse_s3(text: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into bucket and key, checking the bucket name. A key with a
    ``.`` or ``..`` segment is refused, not normalised: S3 keeps ``a/../b`` as a literal key,
    and a proxy or S3-compatible store may not, so no prefix check could say where it leads."""
    parsed = urlparse(text)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    if not _BUCKET.match(bucket) or re.match(r"^\d+\.\d+\.\d+\.\d+$", bucket) or ".." in bucket:
        raise ValueError(f"invalid S3 bucket name {bucket!r} in {text!r}")
    if has_dot_segment(key):
        raise ValueError(f"{text!r}: '.' and '..' segments are not allowed in S3 keys")
    return bucket, key


def local_path(text: str, base_dir: Path) -> Path:
    """A plain path or file:// URI as an absolute path; relative ones are taken from base_dir."""
    if text.startswith("file://"):
        parsed = urlparse(text)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file URI with a host is not supported: {text!r}")
        path = Path(unquote(parsed.path))
    elif "://" in text:
        raise ValueError(f"unsupported URI scheme in {text!r} (use a path, file:// or s3://)")
    else:
        try:
            path = Path(text).expanduser()
        except RuntimeError:  # "~someone" with no such user
            raise ValueError(f"{text!r}: no home folder for {text.split('/')[0]!r}") from None
    return path if path.is_absolute() else (base_dir / path)


def canonical_uri(text: str, base_dir: Path) -> str:
    """One spelling per input, so ids do not depend on how a manifest wrote a path."""
    if is_s3(text):
        bucket, key = parse_s3(text)
        if not key or key.endswith("/"):
            raise ValueError(f"S3 URI names no object: {text!r}")
        return f"s3://{bucket}/{key}"
    return str(Path(posixpath.normpath(local_path(text, base_dir).as_posix())))


def parse_location(text: str, base_dir: Path) -> Location:
    if is_s3(text):
        bucket, key = parse_s3(text)
        return Location("s3", bucket, key.strip("/"))
    path = Path(posixpath.normpath(local_path(text, base_dir).as_posix()))
    return Location("file", str(path))


def join_key(prefix: str, key: str) -> str:
    return f"{prefix}/{key}" if prefix else key


# Anything the checks below refuse (empty, absolute, a backslash or NUL, an empty, '.' or
# '..' part, a drive): a key it does not match passes them all, in one search.
_REFUSED = re.compile(r"\A\Z|\A[/\\]|[\\\x00]|//|/\Z|(?:\A|/)\.\.?(?:/|\Z)|\A[A-Za-z]:")


def check_relative_key(key: str) -> None:
    """Reject keys that would land outside the output prefix (or be unreadable as a path)."""
    if _REFUSED.search(key) is None:
        return  # the common case, a plan's 100,000 keys among them
    if not key or key.startswith(("/", "\\")) or "\\" in key or "\x00" in key:
        raise ValueError(f"output key {key!r} must be a relative path using '/'")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"output key {key!r} escapes or is not inside the output prefix")
    if re.match(r"^[A-Za-z]:", key):
        raise ValueError(f"output key {key!r} looks like a drive path")
