"""A manifest's globs and prefixes, listed only inside what its submitter may read, and
within a bounded number of entries and seconds.

Confine before touching: the root of a glob (the folder before its first wildcard) or a prefix
must lie inside the allowed inputs (common/access.py) before anything is listed, so another
team's keys, another bucket, or the server's own disk is never listed for a submitter, and the
refusal says so without naming what was asked for. A prefix is a folder: ``s3://in/team-a``
lists ``team-a/...``, never ``team-a-secrets/...``. Local walks never follow a linked folder,
and a linked file is kept only where its link stays inside (``resolve_within``).

One ``Budget`` covers all the globs and prefixes of one manifest: at most
``STYLEBATCH_MAX_LISTED`` entries looked at and ``STYLEBATCH_LIST_SECONDS`` spent; past either
the manifest is refused with the limit named.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import stat
import time
from dataclasses import dataclass, field

from common.access import _local_roots, not_allowed, reachable, resolve_within
from common.errors import InputError, TransientStorageError
from common.imageio import IMAGE_SUFFIXES
from common.settings import Settings
from common.uris import has_dot_segment, is_s3, parse_s3

WILDCARDS = "*?["
PAGE = 1000  # S3 keys a listing request returns at most


class OverBudget(InputError):
    """A listing went past its entries or seconds."""


@dataclass
class Budget:
    """What the listings of one manifest may still look at, and until when."""

    entries: int
    seconds: float
    deadline: float = field(init=False)
    seen: int = 0

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.seconds

    @classmethod
    def of(cls, settings: Settings) -> Budget:
        return cls(settings.max_listed, settings.list_seconds)

    def spend(self, n: int = 1) -> None:
        self.seen += n
        if self.seen > self.entries:
            raise OverBudget(
                f"listing stopped: more than {self.entries} entries to look at "
                "(STYLEBATCH_MAX_LISTED); narrow the glob or prefix, or list the images"
            )
        if time.monotonic() > self.deadline:
            raise OverBudget(
                f"listing stopped: it took over {self.seconds:g} s (STYLEBATCH_LIST_SECONDS); "
                "narrow the glob or prefix, or list the images"
            )


def literal_head(pattern: str) -> str:
    """The text before the first wildcard."""
    for i, ch in enumerate(pattern):
        if ch in WILDCARDS:
            return pattern[:i]
    return pattern


def find_inputs(pattern: str, recursive: bool, settings: Settings, budget: Budget) -> list[str]:
    """Canonical URIs of the images matching a glob (``recursive`` False) or under a prefix
    (True), sorted; InputError if its root is outside the allowed inputs (nothing is listed
    then) or the budget runs out."""
    if is_s3(pattern):
        return _s3(pattern, recursive, settings, budget)
    return _local(pattern, recursive, settings, budget)


def _s3(pattern: str, recursive: bool, settings: Settings, budget: Budget) -> list[str]:
    from common.storage import s3_client, storage_error

    try:
        bucket, key = parse_s3(pattern)  # refuses dot segments and bad bucket names
    except ValueError as exc:
        raise InputError(str(exc).replace(repr(pattern), "the URI")) from None
    if recursive:
        folder = key.strip("/")
        listed = f"{folder}/" if folder else ""
    else:
        listed = literal_head(key)
        folder = listed.rsplit("/", 1)[0] if "/" in listed else ""
    root = f"s3://{bucket}/{folder}" if folder else f"s3://{bucket}"
    if not reachable(root, settings.allowed_inputs):
        raise InputError(not_allowed(settings.allowed_inputs))
    client = s3_client(settings, attempts=2, timeout=max(1.0, min(10.0, budget.seconds)))
    found: list[str] = []
    token: str | None = None
    while True:
        budget.spend(0)  # the clock, before each request
        ask = {"Bucket": bucket, "Prefix": listed, "MaxKeys": PAGE}
        if token:
            ask["ContinuationToken"] = token
        try:
            page = client.list_objects_v2(**ask)
        except Exception as exc:
            error = storage_error(exc, bucket, listed)
            if isinstance(error, TransientStorageError):
                raise error from None  # S3 away: try again later, not the manifest's fault
            raise InputError(str(error)) from None
        contents = page.get("Contents", [])
        budget.spend(len(contents))
        for obj in contents:
            name = obj["Key"]
            uri = f"s3://{bucket}/{name}"
            if has_dot_segment(name) or not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            if (recursive or fnmatch.fnmatchcase(name, key)) and reachable(
                uri, settings.allowed_inputs
            ):
                found.append(uri)
        if not page.get("IsTruncated"):
            break
        token = page.get("NextContinuationToken")
    return sorted(found)


def _local(pattern: str, recursive: bool, settings: Settings, budget: Budget) -> list[str]:
    path = posixpath.normpath(pattern)
    parts = [p for p in path.split("/") if p]
    if recursive:
        fixed, wanted = parts, []
    else:
        cut = next((i for i, p in enumerate(parts) if any(c in p for c in WILDCARDS)), len(parts))
        fixed, wanted = parts[:cut], parts[cut:]
    root = "/" + "/".join(fixed)
    roots = _local_roots(settings.allowed_inputs)
    real = resolve_within(root, roots)
    if not path.startswith("/") or real is None:
        raise InputError(not_allowed(settings.allowed_inputs))
    found: list[str] = []
    if not wanted and not recursive:  # a glob with no wildcard: the one file, if it is one
        if _is_file(root, roots):
            found.append(root)
    else:
        _walk(root, real, {tuple(wanted)}, recursive, roots, budget, found)
    return sorted(p for p in found if p.lower().endswith(IMAGE_SUFFIXES))


def _is_file(path: str, roots: tuple[str, ...]) -> bool:
    real = resolve_within(path, roots)
    if real is None:
        return False
    try:
        return stat.S_ISREG(os.stat(real).st_mode)
    except OSError:
        return False


def _walk(
    shown: str,
    real: str,
    states: set[tuple[str, ...]],
    recursive: bool,
    roots: tuple[str, ...],
    budget: Budget,
    found: list[str],
) -> None:
    """Match the glob segments left (``states``: one tuple per way the pattern can still
    match; ``**`` is any depth, zero included) below the folder ``real`` (named ``shown`` as
    the manifest gives it), or everything below it (``recursive``). Each folder is read once.
    Linked folders are not entered; linked files count only where they resolve inside."""
    for state in list(states):  # ``**`` also matches no folder at all
        while state and state[0] == "**" and state[1:] not in states:
            state = state[1:]
            states.add(state)
    try:
        with os.scandir(real) as entries:
            listing = sorted(entries, key=lambda e: e.name)
    except OSError:
        return
    budget.spend(len(listing))
    for entry in listing:
        name = f"{shown}/{entry.name}" if shown != "/" else f"/{entry.name}"
        try:
            linked = entry.is_symlink()
            folder = not linked and entry.is_dir(follow_symlinks=False)
        except OSError:
            continue
        if folder:
            below: set[tuple[str, ...]] = set()
            for state in states:
                if state and state[0] == "**":
                    below.add(state)
                elif len(state) > 1 and fnmatch.fnmatchcase(entry.name, state[0]):
                    below.add(state[1:])
            if recursive or below:
                _walk(name, entry.path, below, recursive, roots, budget, found)
            continue
        hit = recursive or any(
            len(state) == 1 and fnmatch.fnmatchcase(entry.name, state[0]) for state in states
        )
        if not hit:
            continue
        if linked and not _is_file(name, roots):
            continue  # a link that leads outside, to a folder, or nowhere
        if not linked and not entry.is_file(follow_symlinks=False):
            continue
        found.append(name)
