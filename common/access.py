"""What a job may read and write: allowed prefixes, matched at boundaries, and the fleet's own
locations, which no output may touch whatever the settings allow.

A prefix matches a bucket whole and a path at ``/``: ``s3://team-a`` allows
``s3://team-a/x.png`` but not ``s3://team-a-secrets/x.png``; ``s3://team-a/shots`` allows
``s3://team-a/shots/x.png`` but not ``s3://team-a/shots-old/x.png``. ``s3://`` allows every
bucket, ``/`` every local path. Local paths are normalised: compared after resolving symlinks
and ``..``, as the system will open them. S3 keys with a ``.`` or ``..`` segment (also
percent-encoded) are refused: S3 keeps them literally, so they lie under no prefix.

Inputs are confined before they are touched: ``reachable`` decides from the text of a URI
or path alone whether it may lie inside the allowed prefixes, and follows a local path's links
one by one from the prefix down, never looking at anything outside it (``resolve_within``). A
refusal names the field and the prefixes, never the input: what lies outside them is not the
submitter's to learn about, not even whether it exists.

Checked at validate and submit, and again by workers before every read and every write, so a
hand-made task or job record cannot get round them.
"""

from __future__ import annotations

import os
import posixpath
import site
import stat
import sys
import sysconfig
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from common.errors import InputError, StorageError
from common.settings import Settings
from common.uris import has_dot_segment, is_s3


class OutputRefused(StorageError):
    """An output location or key that this fleet must not write."""


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key.strip("/")


def under(target: str, prefix: str) -> bool:
    """Whether ``target`` (a URI or absolute path) lies under ``prefix``, at a boundary."""
    if is_s3(prefix) != is_s3(target):
        return False
    if is_s3(prefix):
        pbucket, pkey = _split_s3(prefix)
        tbucket, tkey = _split_s3(target)
        if has_dot_segment(tkey) or has_dot_segment(pkey):
            return False  # refused, never normalised: see the module's docstring
        if not pbucket:
            return True
        return tbucket == pbucket and (not pkey or tkey == pkey or tkey.startswith(pkey + "/"))
    root = str(Path(prefix).resolve())
    path = str(Path(target).resolve())
    return root == "/" or path == root or path.startswith(root + "/")


MAX_LINKS = 40  # links followed in one path before it is refused (a loop, or a maze)


@lru_cache(maxsize=64)
def _local_roots(prefixes: tuple[str, ...]) -> tuple[str, ...]:
    """The local prefixes as written (normalised) and as resolved: an operator's setting may
    name a folder through a link, and a manifest may name it either way."""
    roots: list[str] = []
    for prefix in prefixes:
        if is_s3(prefix) or not prefix.startswith("/"):
            continue
        for form in (posixpath.normpath(prefix), str(Path(prefix).resolve())):
            if form not in roots:
                roots.append(form)
    return tuple(roots)


def _root_of(path: str, roots: Iterable[str]) -> str | None:
    """The (longest) root that ``path`` lies under, by its text alone."""
    found = [r for r in roots if r == "/" or path == r or path.startswith(r + "/")]
    return max(found, key=len) if found else None


def resolve_within(path: str, roots: tuple[str, ...]) -> str | None:
    """The real path of the absolute ``path``, or None where it leads outside ``roots``. Found
    from the root down, one component at a time: a link's target is judged by its text before
    it is looked at, so nothing outside the roots is ever stat'ed, read or listed, and what
    lies there (or whether it exists) cannot change the answer. A path that does not exist
    resolves to itself below its last existing folder."""
    path = posixpath.normpath(path)
    root = _root_of(path, roots)
    if root is None:
        return None
    rest = [p for p in path[len(root) :].split("/") if p]
    current, links = root, 0
    while rest:
        part = rest.pop(0)
        if part == "..":  # only from a link's target (the path itself was normalised)
            current = posixpath.dirname(current)
            if _root_of(current, roots) is None:
                return None
            continue
        candidate = posixpath.join(current, part)
        try:
            mode = os.lstat(candidate).st_mode
        except FileNotFoundError:
            return posixpath.join(candidate, *rest)
        except OSError:
            return None
        if not stat.S_ISLNK(mode):
            current = candidate
            continue
        links += 1
        if links > MAX_LINKS:
            return None
        target = posixpath.normpath(posixpath.join(current, os.readlink(candidate)))
        inner = _root_of(target, roots)
        if inner is None:
            return None
        current = inner
        rest = [p for p in target[len(inner) :].split("/") if p] + rest
    return current


def reachable(uri: str, prefixes: Iterable[str]) -> bool:
    """Whether an input (a canonical URI or absolute path) lies under one of ``prefixes``: an
    S3 key by its text (a ``.`` or ``..`` segment never), a local path by its text and then
    link by link without looking outside them (``resolve_within``)."""
    prefixes = tuple(prefixes)
    if is_s3(uri):
        return any(under(uri, p) for p in prefixes if is_s3(p))
    if not uri.startswith("/"):
        return False
    roots = _local_roots(prefixes)
    real = resolve_within(uri, roots)
    return real is not None and _root_of(real, roots) is not None


def not_allowed(prefixes: Iterable[str], setting: str = "STYLEBATCH_ALLOWED_INPUTS") -> str:
    """The refusal of an input outside ``prefixes``: it names them, never the input."""
    return f"not among the inputs this worker may read ({setting}={','.join(prefixes)})"


def check_allowed(uri: str, settings: Settings) -> None:
    """InputError unless ``uri`` is under one of the allowed inputs (the message names the
    allowed prefixes, not the input: see the module's docstring)."""
    if is_s3(uri) and has_dot_segment(_split_s3(uri)[1]):
        raise InputError("'.' and '..' segments are not allowed in S3 keys")
    if not reachable(uri, settings.allowed_inputs):
        raise InputError(not_allowed(settings.allowed_inputs))


def _folder_of(spec: str) -> str:
    """The folder (or bucket) holding a file named by a URI or path."""
    if is_s3(spec):
        bucket, key = _split_s3(spec)
        parent = posixpath.dirname(key)
        return f"s3://{bucket}/{parent}" if parent else f"s3://{bucket}"
    return str(Path(spec).expanduser().resolve().parent)


@lru_cache(maxsize=8)
def protected(settings: Settings) -> tuple[tuple[str, str], ...]:
    """(prefix, what it holds): the fleet's weights, schedules, code and configuration.
    Worked out once per settings: every output write asks."""
    out: list[tuple[str, str]] = []
    if settings.weights not in ("imagenet",) and not settings.weights.startswith("random"):
        out.append((_folder_of(settings.weights), "the fleet's weights (STYLEBATCH_WEIGHTS)"))
    if settings.schedules:
        out.append((settings.schedules, "the scheduled manifests (STYLEBATCH_SCHEDULES)"))
    out.append((str(settings.cache_dir), "the workers' cache (STYLEBATCH_CACHE_DIR)"))
    torch_home = os.environ.get("TORCH_HOME", str(Path.home() / ".cache" / "torch"))
    out.append((torch_home, "torchvision's weights (TORCH_HOME)"))
    code = {sys.prefix, sys.base_prefix, sys.exec_prefix, site.getuserbase()}
    code |= {p for p in sysconfig.get_paths().values() if p}
    package_root = Path(__file__).resolve().parents[1]
    code |= {str(package_root / name) for name in ("common", "scheduler", "workers")}
    out += [(path, "the fleet's code (Python and its packages)") for path in sorted(code)]
    system = ("/etc", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/boot", "/dev", "/proc",
              "/sys", str(Path.home() / ".ssh"), str(Path.home() / ".config"))  # fmt: skip
    out += [(path, "the system's programs and configuration") for path in system]
    return tuple(out)


def check_output(uri: str, settings: Settings) -> None:
    """OutputRefused unless ``uri`` (a location or an output's full URI or path) may be
    written: under an allowed output and under none of the fleet's own locations. The allowed
    outputs are asked first, by the text alone, so a location outside them is refused without
    looking at it or saying what it holds."""
    if is_s3(uri) and has_dot_segment(_split_s3(uri)[1]):
        raise OutputRefused("'.' and '..' segments are not allowed in S3 keys")
    refused = (
        "not among the outputs this fleet may write "
        f"(STYLEBATCH_ALLOWED_OUTPUTS={','.join(settings.allowed_outputs)})"
    )
    if not is_s3(uri):
        lexical = posixpath.normpath(uri) if uri.startswith("/") else ""
        if not lexical or _root_of(lexical, _local_roots(settings.allowed_outputs)) is None:
            raise OutputRefused(refused)
    if not any(under(uri, p) for p in settings.allowed_outputs):
        raise OutputRefused(refused)
    for prefix, what in protected(settings):
        if under(uri, prefix) or under(prefix, uri):  # in it, or holding it
            raise OutputRefused(f"refused as an output: it holds {what}")
