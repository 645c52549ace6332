"""Weight specs as the engine takes them: s3:// URIs are fetched into the local cache, keyed by
their ETag, so weights replaced in S3 are fetched again and never served stale."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from common.access import check_allowed
from common.errors import InputError
from common.settings import Settings
from common.storage import atomic_write, read_input, s3_client, storage_error
from common.uris import is_s3, parse_s3


def local_weights(spec: str, settings: Settings, identity: str = "") -> str:
    """A path the engine can load. Weights named by a manifest (not the operator's setting)
    are inputs like any other: they must be allowed. ``identity`` is the ETag the job was
    planned with; without it, the object's current one (one HEAD)."""
    named = spec != "imagenet" and not spec.startswith("random")
    if named and spec != settings.weights:
        check_allowed(spec, settings)
    if not is_s3(spec):
        return spec
    etag = identity.removeprefix("etag:")
    if not etag:
        bucket, key = parse_s3(spec)
        try:
            etag = s3_client(settings).head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
        except Exception as exc:
            raise InputError(f"weights {spec}: {storage_error(exc, bucket, key)}") from None
    name = hashlib.sha256(f"{spec}\0{etag}".encode()).hexdigest()[:16] + ".pth"
    path = Path(settings.cache_dir) / "weights" / name
    if not path.is_file():
        big = Settings(**{**settings.__dict__, "max_input_bytes": 4 << 30})
        try:
            atomic_write(path, read_input(spec, big, etag))
        except InputError as exc:
            raise InputError(f"weights {spec}: {exc}") from None
    return str(path)


def weights_version(spec: str, identity: str) -> str:
    """What tells two loads of ``spec`` apart: the planned identity, or a local file's size
    and modification time (a file replaced on a worker's disk is loaded again)."""
    if identity or is_s3(spec) or spec == "imagenet" or spec.startswith("random"):
        return identity
    try:
        stat = os.stat(spec)
    except OSError:
        return ""
    return f"{stat.st_size}:{stat.st_mtime_ns}"
