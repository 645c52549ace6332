"""Intake: how a manifest becomes a job, in one path for everyone who sends one (`stylebatch
submit`, the web front's POST /jobs, beat's slots), so each is checked the same way:

1. **plan**: validate the document and expand it into renders, every input confined to what
   the submitter may read before it is looked at (common/expand.py, common/listing.py);
2. **check**: the output location confined to what the submitter may write, then preflight
   (scheduler/preflight.py: the location takes writes, the weights and webhook are usable);
3. **submit**: record the job whole and enqueue its renders (scheduler/submit.py).

A refusal is a ``Refused`` with every problem and its path. For a team, a problem's message
never names a URI or path outside the team's prefixes (``redact``), whatever produced it.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from common.access import _local_roots, _root_of, under
from common.errors import ManifestError, Problem, StylebatchError, TransientError
from common.expand import JobPlan, plan_document
from common.inputs import CannotCheck
from common.settings import Settings
from common.uris import is_s3


@dataclass(frozen=True)
class Submitter:
    """Who sends a manifest, and what it may reach: the fleet's operator (``team`` '', the
    fleet's settings) or a web team (its settings narrowed to its prefixes)."""

    settings: Settings
    team: str = ""
    webhook_secrets: tuple[str, ...] | None = field(default=None, repr=False)  # a team's own

    @property
    def prefixes(self) -> tuple[str, ...]:
        return (*self.settings.allowed_inputs, *self.settings.allowed_outputs)


class Refused(StylebatchError):
    """A manifest refused: ``title`` (invalid manifest, output refused, preflight failed) and
    every problem, with its path."""

    def __init__(self, title: str, source: str, problems: list[Problem]):
        super().__init__(f"{title}: {source}")
        self.title, self.source, self.problems = title, source, problems


class Unchecked(StylebatchError):
    """The manifest cannot be checked now (no S3 credentials here, S3 away): no fault of the
    manifest's, and nothing was done."""


def plan(
    document: dict[str, Any],
    source: str,
    base_dir: Path,
    who: Submitter,
    weights: str | None = None,
    slot: datetime | None = None,
) -> JobPlan:
    """Validate and expand; Refused with every problem, or Unchecked."""
    try:
        return plan_document(document, source, base_dir, who.settings, weights, slot)
    except ManifestError as exc:
        raise Refused("invalid manifest", source, _told(exc.problems, who)) from None
    except CannotCheck as exc:
        raise Unchecked(str(exc)) from None
    except RecursionError:
        raise Refused("invalid manifest", source, [Problem("", "nested too deeply")]) from None


def check(job: JobPlan, who: Submitter) -> None:
    """The output location, then everything that would fail renders, found before anything is
    recorded; Refused, or Unchecked where S3 cannot be asked now."""
    from common.access import OutputRefused, check_output
    from scheduler.preflight import preflight

    try:
        check_output(str(job.location), who.settings)
    except OutputRefused as exc:
        problems = [Problem("output.location", str(exc))]
        raise Refused("output refused", job.source, _told(problems, who)) from None
    try:
        problems = preflight(job, who.settings, who.team, who.webhook_secrets)
    except TransientError as exc:
        raise Unchecked(f"cannot check the output now, try again: {exc}") from None
    if problems:
        raise Refused("preflight failed", job.source, _told(problems, who))


def submit(job: JobPlan, who: Submitter, app: Any, store: Any, force: bool = False) -> Any:
    """Record and enqueue a checked plan (scheduler/submit.py's ``Submitted``)."""
    from scheduler.submit import submit as record_and_enqueue

    return record_and_enqueue(job, who.settings, app, store, force, team=who.team)


def intake(
    document: dict[str, Any],
    source: str,
    base_dir: Path,
    who: Submitter,
    app: Any,
    store: Any,
    weights: str | None = None,
    slot: datetime | None = None,
    force: bool = False,
) -> tuple[JobPlan, Any]:
    """All three steps: (the plan, what submit did)."""
    job = plan(document, source, base_dir, who, weights, slot)
    check(job, who)
    return job, submit(job, who, app, store, force)


def _told(problems: list[Problem], who: Submitter) -> list[Problem]:
    """Problems as the submitter is told them: a team's settings named as its own prefixes,
    and nothing outside them named at all."""
    if not who.team:
        return problems
    out = []
    for p in problems:
        message = p.message
        for setting, what in (("OUTPUTS", "outputs"), ("INPUTS", "inputs")):
            message = message.replace(
                f"(STYLEBATCH_ALLOWED_{setting}=", f"(team {who.team}'s allowed {what}: "
            )
        message = message.replace("this worker may read", "this team may read")
        message = message.replace("this fleet may write", "this team may write")
        out.append(Problem(p.where, redact(message, who.prefixes)))
    return out


# A URI or an absolute path inside a message (not the path of an http URL: the character
# before it is not a letter, digit, '.', ':' or '/').
_NAMED = re.compile(r"s3://[^\s'\",;)\]]*|(?<![\w.:/~\-])/[^\s'\",;)\]]*")
HIDDEN = "(outside your prefixes)"


def redact(message: str, prefixes: tuple[str, ...]) -> str:
    """``message`` with every URI or path that lies outside ``prefixes`` replaced, judged by
    text alone (nothing is looked at): the last guard that a refusal never names another
    team's keys or the server's files, whichever check wrote it."""
    roots = _local_roots(prefixes)

    def keep(match: re.Match) -> str:
        text = match.group(0).rstrip(".:")
        tail = match.group(0)[len(text) :]
        if is_s3(text):
            inside = any(under(text, p) or under(p, text) for p in prefixes if is_s3(p))
        else:
            path = posixpath.normpath(text)
            inside = _root_of(path, roots) is not None or any(
                r.startswith(path.rstrip("/") + "/") for r in roots
            )
        return match.group(0) if inside else HIDDEN + tail

    return _NAMED.sub(keep, message)


def operator_settings(document: Any, weights: str | None, fleet: Settings) -> Settings:
    """What the command line checks a manifest with: the fleet's where it names anything on
    S3 (its output, an input, a mask, the weights: it is the fleet's to run; `submit` checks
    with these), else a local run's (``Settings.local_run``: a job on local files alone is one
    for `stylebatch run`)."""
    on_s3 = _names_s3(document) or is_s3(weights or fleet.weights)
    return fleet if on_s3 else Settings.local_run()


def _names_s3(value: Any, depth: int = 0) -> bool:
    if depth > 64:
        return False
    if isinstance(value, str):
        return is_s3(value)
    if isinstance(value, dict):
        return any(_names_s3(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return any(_names_s3(v, depth + 1) for v in value)
    return False
