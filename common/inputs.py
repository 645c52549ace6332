"""Inputs known by their content. At submit every input is checked (allowed, present, small
enough) and identified: an S3 object by its ETag, a local file by a hash of its bytes. The
identity is part of each render's id, so a replaced shot renders again and an unchanged one is
skipped; workers fetch exactly that content or fail the render, never a stale or newer copy.

S3 objects are HEADed in parallel, except where many share a folder: that folder is listed
instead (1,000 keys a request), so 10,000 inputs cost about ten requests rather than 10,000.
Many inputs scattered over small folders are found by listing what they share, unless that
listing runs past ten times their number. A folder is listed only where it lies inside the
allowed inputs as a whole (common/access.py): never a listing that could show another team's
keys, even ones this process would then drop.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from collections import defaultdict
from concurrent.futures import Executor, ThreadPoolExecutor
from functools import lru_cache

from common.access import check_allowed, reachable
from common.errors import InputError, Problem, StylebatchError, TransientError
from common.settings import Settings
from common.storage import s3_client, storage_error
from common.uris import is_s3, parse_s3

LIST_FROM = 20  # inputs in one folder from which listing it beats HEADing each
THREADS = 32
NO_CREDENTIALS = (
    "no credentials (set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or STYLEBATCH_S3_ENDPOINT)"
)


class CannotCheck(StylebatchError):
    """The environment, not the manifest: S3 inputs cannot be looked at from here."""


def has_credentials() -> bool:
    import boto3

    return boto3.session.Session().get_credentials() is not None


def require_s3_access(what: str = "s3 inputs") -> None:
    if not has_credentials():
        raise CannotCheck(f"cannot check {what}: {NO_CREDENTIALS}")


def file_identity(path: str) -> str:
    """``sha256:<hex>`` of a local file's bytes (memoised by size, mtime and inode)."""
    stat = os.stat(path)
    return _hashed(path, stat.st_size, stat.st_mtime_ns, stat.st_ino)


@lru_cache(maxsize=65536)
def _hashed(path: str, size: int, mtime_ns: int, inode: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()[:32]


def etag_identity(etag: str) -> str:
    return "etag:" + etag.strip('"')


Found = list[tuple[str, int | None, str | None, str | None]]  # (uri, size, identity, error)


def identify(inputs: dict[str, str], settings: Settings) -> tuple[dict[str, str], list[Problem]]:
    """The identity of every input (``uri -> where the manifest names it``), and a problem for
    each one that is not allowed, missing or over the size limit. Raises CannotCheck when S3
    cannot be reached or there are no credentials: that is no fault of the manifest."""
    problems: list[Problem] = []
    folders: dict[tuple[str, str], list[str]] = defaultdict(list)
    local: list[str] = []
    for uri, where in inputs.items():
        try:
            check_allowed(uri, settings)
        except InputError as exc:
            problems.append(Problem(where, str(exc)))
            continue
        if is_s3(uri):
            bucket, key = parse_s3(uri)
            folders[(bucket, posixpath.dirname(key))].append(uri)
        else:
            local.append(uri)
    if folders:
        require_s3_access()
    with ThreadPoolExecutor(THREADS) as pool:
        found = [*pool.map(_local, local), *_found_on_s3(folders, settings, pool)]
    identities: dict[str, str] = {}
    limit = settings.max_input_bytes
    for uri, size, identity, error in found:
        if error:
            problems.append(Problem(inputs[uri], f"{uri}: {error}"))
        elif size is not None and size > limit:
            problems.append(
                Problem(
                    inputs[uri],
                    f"{uri}: {size} bytes exceeds the input limit of {limit} "
                    "(STYLEBATCH_MAX_INPUT_BYTES)",
                )
            )
        elif identity:
            identities[uri] = identity
    return identities, problems


def weights_identity(spec: str, settings: Settings) -> tuple[str, Problem | None]:
    """S3 weights by their ETag; a local path is read on the workers' disks (identified there),
    and ``imagenet`` or ``random:N`` are fixed. Weights named by a manifest rather than the
    operator's setting are inputs like any other: they must be allowed."""
    if spec == "imagenet" or spec.startswith("random"):
        return "", None
    if spec != settings.weights:
        try:
            check_allowed(spec, settings)
        except InputError as exc:
            return "", Problem("weights", str(exc))
    if not is_s3(spec):
        return "", None
    require_s3_access("the weights")
    found = _headed(spec, s3_client(settings))[0]
    if found[3]:
        return "", Problem("weights", f"{spec}: {found[3]}")
    return found[2] or "", None


def _local(uri: str) -> tuple[str, int | None, str | None, str | None]:
    try:
        return uri, os.stat(uri).st_size, file_identity(uri), None
    except FileNotFoundError:
        return uri, None, None, "file not found"
    except IsADirectoryError:
        return uri, None, None, "is a directory, not an image"
    except PermissionError:
        return uri, None, None, "permission denied"


def _found_on_s3(
    folders: dict[tuple[str, str], list[str]], settings: Settings, pool: Executor
) -> Found:
    client = s3_client(settings)
    jobs = []
    scattered: dict[str, list[str]] = defaultdict(list)  # bucket -> inputs in small folders

    def inside(bucket: str, folder: str) -> bool:
        return reachable(f"s3://{bucket}/{folder}".rstrip("/"), settings.allowed_inputs)

    for (bucket, folder), uris in folders.items():
        if len(uris) >= LIST_FROM and inside(bucket, folder):
            prefix = f"{folder}/" if folder else ""
            jobs.append((pool.submit(_listed, client, bucket, prefix, uris), uris))
        else:
            scattered[bucket] += uris
    for bucket, uris in scattered.items():
        keys = [parse_s3(u)[1] for u in uris]
        common = os.path.commonprefix(keys)  # noqa: RUF071 (S3 prefixes are strings)
        common = common[: common.rfind("/") + 1]  # a folder, listed whole or not at all
        if len(uris) >= LIST_FROM and inside(bucket, common):
            cap = 10 * len(uris)  # many small folders: list what they share, within reason
            jobs.append((pool.submit(_listed, client, bucket, common, uris, cap), uris))
        else:
            jobs += [(pool.submit(_headed, uri, client), [uri]) for uri in uris]
    found: Found = []
    for job, uris in jobs:
        result = job.result()
        if result is None:  # the listing would have been far larger than the inputs: HEAD
            result = [
                x for f in [pool.submit(_headed, u, client) for u in uris] for x in f.result()
            ]
        found += result
    return found


def _headed(uri: str, client: object) -> Found:
    bucket, key = parse_s3(uri)
    try:
        head = client.head_object(Bucket=bucket, Key=key)  # type: ignore[attr-defined]
    except Exception as exc:
        return [(uri, None, None, _reason(exc, bucket, key))]
    return [(uri, int(head.get("ContentLength", 0)), etag_identity(head.get("ETag", "")), None)]


def _listed(
    client: object, bucket: str, prefix: str, uris: list[str], cap: int | None = None
) -> Found | None:
    """Sizes and ETags of ``uris`` from a listing of ``prefix``: one folder, or (with ``cap``)
    everything under it, given up past ``cap`` keys (None: HEAD them instead)."""
    seen: dict[str, tuple[int, str]] = {}
    try:
        pages = client.get_paginator("list_objects_v2")  # type: ignore[attr-defined]
        options = {"Delimiter": "/"} if cap is None else {}
        for page in pages.paginate(Bucket=bucket, Prefix=prefix, **options):
            for obj in page.get("Contents", []):
                uri = f"s3://{bucket}/{obj['Key']}"
                seen[uri] = (int(obj["Size"]), etag_identity(obj.get("ETag", "")))
            if cap is not None and len(seen) > cap:
                return None
    except Exception as exc:
        reason = _reason(exc, bucket, prefix)
        return [(uri, None, None, reason) for uri in uris]
    return [
        (uri, *seen[uri], None) if uri in seen else (uri, None, None, "no such object")
        for uri in uris
    ]


def _reason(exc: Exception, bucket: str, key: str) -> str:
    """Why an object cannot be used; raises CannotCheck when S3 itself is out of reach."""
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
    if code in ("404", "NoSuchKey", "NotFound"):
        return "no such object"
    if code == "NoSuchBucket":
        return f"bucket {bucket!r} does not exist"
    error: StylebatchError = storage_error(exc, bucket, key)
    if isinstance(error, TransientError):
        raise CannotCheck(f"cannot check s3 inputs: {error}") from None
    return str(error).split(": ", 1)[-1]
