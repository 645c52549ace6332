"""Errors that carry enough context for a user to fix their input."""

from __future__ import annotations

from dataclasses import dataclass


class StylebatchError(Exception):
    """Base for errors shown to users as a message, without a traceback."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest, located by its path inside the document."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class ManifestError(StylebatchError):
    """Every problem found in one manifest, reported together."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} problem(s)"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


class InputError(StylebatchError):
    """An input (image, weights, object) that cannot be read or used; names the input."""


class StorageError(StylebatchError):
    """Object storage refused or failed an operation; names the bucket or key."""


class TransientError(StylebatchError):
    """A dependency was unreachable or overloaded: the same call may succeed later."""


class TransientStorageError(StorageError, TransientError):
    """Object storage unreachable, timing out or answering 5xx."""


class DeviceError(StylebatchError):
    """The accelerator failed (a CUDA error, a lost device, memory exhausted at the smallest
    batch): the render is not at fault and is retried elsewhere."""


class ConfigError(StylebatchError):
    """This worker's own configuration is broken (weights it cannot load, a signing key it
    cannot read, credentials refused where it must write): no render's fault, and no render
    will succeed here, so the worker hands its renders back and steps aside."""


def _time_limits() -> tuple[type[BaseException], ...]:
    try:
        from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
    except ImportError:  # pragma: no cover - celery brings billiard
        return ()
    return (SoftTimeLimitExceeded, TimeLimitExceeded)


TIME_LIMITS = _time_limits()


def never_swallowed(exc: BaseException) -> None:
    """Re-raise a task's time limit. Celery raises its soft limit inside whatever call the
    task was making (a boto3 request, say), as an ``Exception``: a handler that turns errors
    of that call into its own must let it through, or the task's clean way out of its limit
    never runs (and a render whose output was written is recorded failed). Every broad
    handler around a storage call starts with this."""
    if TIME_LIMITS and isinstance(exc, TIME_LIMITS):
        raise exc
