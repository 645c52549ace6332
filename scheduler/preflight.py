"""Checks before any GPU time is spent: the output location exists and takes writes, every input
object exists (and is allowed and small enough), and the weights can be read.

Inputs are checked in parallel. Objects are HEADed one by one, except where many share a
folder: that folder is listed instead (1,000 keys a request), so 10,000 inputs cost about ten
requests rather than 10,000. Many inputs scattered over small folders are found by listing
what they share, unless that listing runs past ten times their number.
"""

from __future__ import annotations

import os
import posixpath
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common.access import OutputRefused, check_allowed, check_output
from common.errors import InputError, Problem, StylebatchError
from common.expand import JobPlan
from common.settings import Settings
from common.storage import s3_client, storage_error
from common.uris import Location, is_s3, join_key, parse_s3

LIST_FROM = 20  # inputs in one folder from which listing it beats HEADing each
THREADS = 32
PROBE_KEY = ".stylebatch-write-check"


def has_credentials() -> bool:
    import boto3

    return boto3.session.Session().get_credentials() is not None


def uses_s3(plan: JobPlan) -> bool:
    uris = {r.content for r in plan.renders} | {u for r in plan.renders for u, _ in r.style_images}
    return plan.location.scheme == "s3" or is_s3(plan.weights) or any(map(is_s3, uris))


def preflight(plan: JobPlan, settings: Settings) -> list[Problem]:
    """Every problem that would fail renders of this job, found without rendering."""
    inputs: dict[str, str] = {}  # uri -> where the manifest names it
    for render in plan.renders:
        inputs.setdefault(render.content, "content")
        for uri, _ in render.style_images:
            inputs.setdefault(uri, f"styles[{render.style}]")
    with ThreadPoolExecutor(THREADS) as pool:
        problems = check_location(plan.location, settings)
        problems += check_weights(plan.weights, settings)
        problems += check_inputs(inputs, settings, pool)
    return problems


def check_location(location: Location, settings: Settings) -> list[Problem]:
    where = "output.location"
    try:
        check_output(str(location), settings)
    except OutputRefused as exc:
        return [Problem(where, str(exc))]
    if location.scheme != "s3":
        folder = Path(location.root)
        existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK):
            return [Problem(where, f"{location}: folder cannot be written ({existing})")]
        return []
    client = s3_client(settings)
    key = join_key(location.prefix, PROBE_KEY)
    try:
        client.head_bucket(Bucket=location.root)
        client.put_object(Bucket=location.root, Key=key, Body=b"")
        client.delete_object(Bucket=location.root, Key=key)
    except Exception as exc:
        error = storage_error(exc, location.root, key)
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchBucket", "NotFound"):
            return [Problem(where, f"{location}: bucket {location.root!r} does not exist")]
        return [Problem(where, f"{location}: cannot write: {error}")]
    return []


def check_weights(spec: str, settings: Settings) -> list[Problem]:
    if spec == "imagenet" or spec.startswith("random"):
        return []
    try:
        if spec != settings.weights:  # named by the manifest: an input like any other
            check_allowed(spec, settings)
    except InputError as exc:
        return [Problem("weights", str(exc))]
    if is_s3(spec):
        bucket, key = parse_s3(spec)
        try:
            s3_client(settings).head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            return [Problem("weights", f"{spec}: {_reason(exc, bucket, key)}")]
    # A local path is read on the workers' disks, which this machine may not see.
    return []


def check_inputs(inputs: dict[str, str], settings: Settings, pool: Any) -> list[Problem]:
    problems: list[Problem] = []
    folders: dict[tuple[str, str], list[str]] = defaultdict(list)
    for uri, where in inputs.items():
        try:
            check_allowed(uri, settings)
        except InputError as exc:
            problems.append(Problem(where, str(exc)))
            continue
        if is_s3(uri):
            bucket, key = parse_s3(uri)
            folders[(bucket, posixpath.dirname(key))].append(uri)
    jobs = []
    scattered: dict[str, list[str]] = defaultdict(list)  # bucket -> inputs in small folders
    for (bucket, folder), uris in folders.items():
        if len(uris) >= LIST_FROM:
            prefix = f"{folder}/" if folder else ""
            jobs.append((pool.submit(_listed, bucket, prefix, uris, settings), uris))
        else:
            scattered[bucket] += uris
    for bucket, uris in scattered.items():
        if len(uris) >= LIST_FROM:  # many small folders: list what they share, within reason
            keys = [parse_s3(u)[1] for u in uris]
            common = os.path.commonprefix(keys)  # noqa: RUF071 (S3 prefixes are strings)
            cap = 10 * len(uris)
            jobs.append((pool.submit(_listed, bucket, common, uris, settings, cap), uris))
        else:
            jobs += [(pool.submit(_headed, uri, settings), [uri]) for uri in uris]
    limit = settings.max_input_bytes
    found: Found = []
    for job, uris in jobs:
        result = job.result()
        if result is None:  # the listing would have been far larger than the inputs: HEAD
            result = [
                x for f in [pool.submit(_headed, u, settings) for u in uris] for x in f.result()
            ]
        found += result
    for uri, size, error in found:
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
    return problems


Found = list[tuple[str, int | None, str | None]]  # (uri, size, error)


def _headed(uri: str, settings: Settings) -> Found:
    bucket, key = parse_s3(uri)
    try:
        head = s3_client(settings).head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        return [(uri, None, _reason(exc, bucket, key))]
    return [(uri, int(head.get("ContentLength", 0)), None)]


def _listed(
    bucket: str, prefix: str, uris: list[str], settings: Settings, cap: int | None = None
) -> Found | list[str]:
    """Sizes of ``uris`` from a listing of ``prefix``: one folder, or (with ``cap``) everything
    under it, given up past ``cap`` keys (None: HEAD them instead)."""
    sizes: dict[str, int] = {}
    try:
        pages = s3_client(settings).get_paginator("list_objects_v2")
        options = {"Delimiter": "/"} if cap is None else {}
        for page in pages.paginate(Bucket=bucket, Prefix=prefix, **options):
            for obj in page.get("Contents", []):
                sizes[f"s3://{bucket}/{obj['Key']}"] = int(obj["Size"])
            if cap is not None and len(sizes) > cap:
                return None
    except Exception as exc:
        reason = _reason(exc, bucket, prefix)
        return [(uri, None, reason) for uri in uris]
    return [(uri, sizes.get(uri), None if uri in sizes else "no such object") for uri in uris]


def _reason(exc: Exception, bucket: str, key: str) -> str:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
    if code in ("404", "NoSuchKey", "NotFound"):
        return "no such object"
    if code == "NoSuchBucket":
        return f"bucket {bucket!r} does not exist"
    error: StylebatchError = storage_error(exc, bucket, key)
    return str(error).split(": ", 1)[-1]
