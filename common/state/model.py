"""What the fleet's state is made of, as Python sees it: the render and job states, a job's
record (``JobInfo``), a render as one attempt holds it (``Held``), and what transitions
answer. No Redis here."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from common.expand import Render
from common.uris import Location

TERMINAL = ("done", "skipped", "failed", "cancelled")
# upper bounds (seconds) of the render-time histogram: a 0.1 s GPU draft to a 3 h CPU render
RENDER_SECONDS_BUCKETS = (0.1, 0.3, 1, 3, 10, 30, 60, 180, 600, 1800, 3600, 10800)
JOB_TERMINAL = ("done", "cancelled", "failed")
REVIEW_DECISIONS = ("approved", "rejected", "superseded")
RENDER_TRANSITIONS = {
    "pending": ("running", *TERMINAL),  # terminal from pending: only the crash cap's give-up
    "running": ("pending", *TERMINAL),
    "failed": ("pending",),  # retry only
}
STAGING_TTL = 600  # seconds a killed submit's staged specs, states and index are kept
# A submit holds its job while it creates and enqueues it (a lease renewed every third of this
# while it lives): a submit that dies lets go within this many seconds.
SUBMIT_LEASE = 15
# The jobs indexes forget an id this long after it was created (create.lua): past any job's
# retention (STYLEBATCH_JOB_TTL) plus the longest a job may run.
JOBS_HORIZON_EXTRA = 30 * 24 * 3600


class Incomplete(redis.RedisError):
    """A create whose staged renders were gone when it came to make the job visible (they
    expired): nothing was made; submitting again stages them afresh."""


@dataclass
class JobInfo:
    job_id: str
    meta: dict[str, str]

    @property
    def total(self) -> int:
        return int(self.meta.get("total", 0))

    @property
    def status(self) -> str:
        return self.meta.get("status", "unknown")

    @property
    def cancelled(self) -> bool:
        return self.meta.get("cancelled") == "1"

    @property
    def terminal(self) -> bool:
        return self.status in JOB_TERMINAL

    def count(self, status: str) -> int:
        return int(self.meta.get(f"n_{status}", 0))

    def cost(self) -> dict[str, Any]:
        """What the job has spent, counted once per render by its transition to an end (a
        render that ran: done, or failed after rendering): device-seconds by device type,
        pixel-iterations, and outputs written. Same shape as ``Summary.cost``."""
        prefix = "cost:seconds:"
        return {
            "device_seconds": {
                k.removeprefix(prefix): round(float(v), 3)
                for k, v in self.meta.items()
                if k.startswith(prefix)
            },
            "pixel_iterations": float(self.meta.get("cost:pixel_iterations", 0)),
            "outputs": int(self.meta.get("cost:outputs", 0)),
        }

    def review(self) -> dict[str, int]:
        """Review progress: decisions by kind, and the outputs (done or skipped renders) still
        undecided."""
        counts = {d: max(0, int(self.meta.get(f"review:{d}", 0))) for d in REVIEW_DECISIONS}
        outputs = self.count("done") + self.count("skipped")
        return counts | {"undecided": max(0, outputs - sum(counts.values()))}

    @property
    def running(self) -> int:
        return max(0, self.count("running"))

    @property
    def outcome(self) -> str | None:
        """How an ended job came out: ``succeeded`` (every render done or skipped),
        ``partial`` (it ended with renders failed), ``failed`` or ``cancelled``; None while it
        runs. A job is ``done`` once its renders have all ended, whatever they came to: this
        says which."""
        if not self.terminal:
            return None
        if self.status == "done":
            return "partial" if self.count("failed") else "succeeded"
        return self.status

    @property
    def headline(self) -> str:
        """The state in words, failures always counted: what the CLI, the pages, the API and
        the webhook say."""
        total, failed = self.total, self.count("failed")
        ended = total - self.pending - self.running
        also = f", {failed} failed" if failed else ""
        if self.status == "done":
            if failed:
                return f"done with failures: {failed} of {total} renders failed"
            return f"done: all {total} renders succeeded" if total else "done: no renders"
        if self.status == "cancelled":
            return f"cancelled: {self.count('cancelled')} of {total} renders cancelled{also}"
        if self.status == "failed":
            return f"failed: {self.meta.get('reason') or 'no reason recorded'}{also}"
        if self.status == "finalizing":
            doing = self.meta.get("finalize_status") or "writing the summary"
            return f"finalizing: all {total} renders ended{also}; {doing}"
        return f"{self.status}: {ended} of {total} renders ended{also}"

    @property
    def pending(self) -> int:
        return max(0, self.total - int(self.meta.get("ended", 0)) - self.running)

    def seconds_since(self, field: str, now: float) -> float:
        return now - float(self.meta.get(field) or self.meta.get("created") or now)

    @property
    def location(self) -> Location:
        scheme, root, prefix = json.loads(self.meta["location"])
        return Location(scheme, root, prefix)


@dataclass(frozen=True)
class Claim:
    """What a task may do with a render: ``claimed`` (render it, as ``attempt``), ``busy`` (a
    live worker has it: a duplicate delivery, ignore), ``ended`` (already terminal: ignore),
    ``gave_up`` (its worker died too often: recorded failed; ``complete`` if that ended the
    job's last render)."""

    outcome: str
    crashes: int = 0
    detail: str = ""
    complete: bool = False
    attempt: int = 0


@dataclass(frozen=True)
class Held:
    """A render as one attempt holds it: what finish and release carry."""

    job_id: str
    render_id: str
    attempt: int
    owner: str = ""  # the claiming process ('' in tests: the attempt alone fences)

    @property
    def field(self) -> str:
        return running_field(self.job_id, self.render_id)


@dataclass
class Beat:
    """A heartbeat's answer: the Redis time, and the held renders that are no longer this
    process's (superseded: reaped and taken by another attempt, or ended)."""

    time: float
    stale: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Rate:
    """A request measured against a team's rate: whether it may go, how many more may now,
    the burst, seconds until the bucket is full again, and until one more may go."""

    allowed: bool
    remaining: int
    limit: int
    reset: float
    retry_after: float


FINISH = {-2: "superseded", -1: "missing", 0: "ended", 1: "recorded", 2: "complete"}

# How a job's renders are indexed at create (one sorted set, all scores 0, read by range of
# prefix): every render, and by style, size (or channel) and content name.
INDEX_FACETS = ("a", "s", "z", "c")
FACETS_LISTED = 200  # styles and sizes named in the job record (the pages' filters)


class Specs:
    """Renders as the JSON their specs are stored as (``Render.to_dict``, read back by
    ``Render.from_dict``), fast: the parts many renders share (a style's images and resolved
    parameters, the identities of a content's inputs) are serialised once per object."""

    def __init__(self) -> None:
        self._shared: dict[int, tuple[Any, str]] = {}  # id(obj) -> (obj, JSON): obj kept alive

    def _once(self, value: Any) -> str:
        got = self._shared.get(id(value))
        if got is None:
            got = self._shared[id(value)] = (value, json.dumps(value, separators=(",", ":")))
        return got[1]

    def json(self, r: Render) -> str:
        text = _json_string
        return (
            f'{{"id":{text(r.id)},"content":{text(r.content)}'
            f',"content_name":{text(r.content_name)},"style":{text(r.style)}'
            f',"style_images":{self._once(r.style_images)},"size":{json.dumps(r.size)}'
            f',"params":{self._once(r.params)},"key":{text(r.key)},"weights":{text(r.weights)}'
            f',"identities":{self._once(r.identities)},"focus":{_compact(r.focus)}'
            f',"mask":{text(r.mask)},"mask_strength":{json.dumps(r.mask_strength)}'
            f',"copies":{_compact(r.copies)}}}'
        )


_json_string = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def index_entries(render: Render) -> tuple[str, ...]:
    """Its entries in the job's render index: by id, style (its copies' names too), size and
    content."""
    rid = render.id
    styles = dict.fromkeys((render.style, *(s for s, _ in render.copies)))
    return (
        f"a\0{rid}",
        *(f"s\0{style}\0{rid}" for style in styles),
        f"z\0{render.size}\0{rid}",
        f"c\0{render.content_name}\0{rid}",
    )


class Facets:
    """The job's styles, sizes (or channels) and contents, gathered render by render."""

    def __init__(self, renders: Iterable[Render] = ()):
        self.styles: set[str] = set()
        self.sizes: set[str] = set()
        self.contents: set[str] = set()
        for render in renders:
            self.add(render)

    def add(self, render: Render) -> None:
        self.styles.add(render.style)
        self.styles.update(style for style, _ in render.copies)
        self.sizes.add(str(render.size))
        self.contents.add(render.content_name)

    def record(self) -> dict[str, Any]:
        """What the job record keeps: the styles and sizes (at most FACETS_LISTED each,
        long sides first, then channels) and how many contents."""
        sizes = sorted(self.sizes, key=lambda s: (not s.isdigit(), len(s), s))
        return {
            "styles": sorted(self.styles)[:FACETS_LISTED],
            "sizes": sizes[:FACETS_LISTED],
            "contents": len(self.contents),
        }


def _matches(
    render: Render,
    state: dict[str, Any],
    wanted: dict[str, str | None],
    decision: str | None = None,
    contains: bool = False,
) -> bool:
    status = state.get("status", "pending")
    have = {"status": status, "size": str(render.size), "content": render.content_name}
    styles = {render.style, *(s for s, _ in render.copies)}
    if decision is not None:
        review = state.get("review") or {}
        if review.get("decision", "undecided") != decision:
            return False
        if decision == "undecided" and status not in ("done", "skipped"):
            return False  # nothing to decide on yet
    for k, v in wanted.items():
        if v is None:
            continue
        if k == "style":
            if v not in styles:
                return False
        elif k == "content" and contains:
            if v.lower() not in render.content_name.lower():
                return False
        elif have[k] != v:
            return False
    return True


@dataclass
class RenderPage:
    """A page of a job's renders: (spec, state) each, the cursor of the next page (None at the
    end) and how many candidates were read."""

    renders: list[tuple[Render, dict[str, Any]]]
    next: str | None
    scanned: int


def running_field(job_id: str, render_id: str) -> str:
    return f"{job_id} {render_id}"
