"""What a job may read and write: allowed prefixes, matched at boundaries, and the fleet's own
locations, which no output may touch whatever the settings allow.

A prefix matches a bucket whole and a path at ``/``: ``s3://team-a`` allows
``s3://team-a/x.png`` but not ``s3://team-a-secrets/x.png``; ``s3://team-a/shots`` allows
``s3://team-a/shots/x.png`` but not ``s3://team-a/shots-old/x.png``. ``s3://`` allows every
bucket, ``/`` every local path. Local paths are normalised: compared after resolving symlinks
and ``..``, as the system will open them. S3 keys with a ``.`` or ``..`` segment (also
percent-encoded) are refused: S3 keeps them literally, so they lie under no prefix.

Checked at validate and submit, and again by workers before every read and every write, so a
hand-made task or job record cannot get round them.
"""

from __future__ import annotations

import os
import posixpath
import site
import sys
import sysconfig
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


def check_allowed(uri: str, settings: Settings) -> None:
    """InputError unless ``uri`` is under one of the allowed inputs."""
    if is_s3(uri) and has_dot_segment(_split_s3(uri)[1]):
        raise InputError(f"{uri}: '.' and '..' segments are not allowed in S3 keys")
    if not any(under(uri, p) for p in settings.allowed_inputs):
        raise InputError(
            f"{uri}: not among the inputs this worker may read "
            f"(STYLEBATCH_ALLOWED_INPUTS={','.join(settings.allowed_inputs)})"
        )


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
    written: under an allowed output and under none of the fleet's own locations."""
    if is_s3(uri) and has_dot_segment(_split_s3(uri)[1]):
        raise OutputRefused(f"{uri}: '.' and '..' segments are not allowed in S3 keys")
    for prefix, what in protected(settings):
        if under(uri, prefix) or under(prefix, uri):  # in it, or holding it
            raise OutputRefused(f"{uri}: refused as an output: it holds {what}")
    if not any(under(uri, p) for p in settings.allowed_outputs):
        raise OutputRefused(
            f"{uri}: not among the outputs this fleet may write "
            f"(STYLEBATCH_ALLOWED_OUTPUTS={','.join(settings.allowed_outputs)})"
        )
