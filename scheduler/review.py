"""The review workflow's decisions, outside the web front's routes: deciding (with a newer
version superseding the one it re-renders), a re-render of a selection as a manifest that
goes through the one intake like any other, and the approved set that an export carries.
Nothing here touches storage; torch is never imported."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from common.dispatch import review_published
from common.manifest import _where
from common.params import PRESETS, Palette, Strict
from common.state import JobInfo, JobStore

SELECTION_LIMIT = 10_000  # renders one re-render or one bulk decision by filter may take
VERSION_DEPTH = 8  # re-renders of re-renders followed at most, when a version supersedes


class Overrides(Strict):
    """What a re-render changes. Everything else is the render as it was made."""

    style_weight: float | None = Field(None, gt=0, le=1e6)
    preset: Literal["draft", "standard", "high"] | None = None
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    palette: Palette | None = None
    focus: tuple[float, float] | None = None
    color: Literal["none", "luminance", "histogram"] | None = None

    @field_validator("focus")
    @classmethod
    def _in_unit_square(cls, focus: tuple[float, float] | None) -> tuple[float, float] | None:
        if focus is not None and not all(0 <= v <= 1 for v in focus):
            raise ValueError("x and y within 0..1 (0, 0 is the top left)")
        return focus

    def given(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True, exclude_none=True)

    def changes(self, render: Any) -> bool:
        """Whether these overrides change ``render`` at all (else it would be made again)."""
        for name, value in self.given().items():
            if name == "focus":
                now: Any = list(render.focus) if render.focus else None
            else:
                now = render.params.get(name)
            if value != now:
                return True
        return False


Problems = list[dict[str, str]]


def read_overrides(data: Any) -> tuple[Overrides | None, Problems]:
    """The overrides, or every problem with its path (``overrides.<field>``); none at all is
    refused too. (Overrides that change none of the selected renders are refused where the
    selection is known: ``Overrides.changes``.)"""
    if not isinstance(data, dict):
        return None, [{"where": "overrides", "message": "an object of changes is needed"}]
    try:
        found = Overrides.model_validate(data)
    except ValidationError as exc:
        return None, [
            {"where": "overrides." + _where(e["loc"]) if e["loc"] else "overrides",
             "message": e["msg"]}
            for e in exc.errors()
        ]  # fmt: skip
    if not found.given():
        return None, [{"where": "overrides", "message": "give at least one change"}]
    return found, []


def _style_params(params: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A render's resolved parameters as a style's ``params``, with the overrides. Values
    that are its preset's own are left out: what is kept is what the manifest set beyond its
    preset, so another preset brings its own values for the rest."""
    preset = params.get("preset", "standard")
    defaults = PRESETS.get(preset, {})
    missing = object()
    kept = {k: v for k, v in params.items() if k != "preset" and defaults.get(k, missing) != v}
    for name in ("style_weight", "seed", "palette", "color"):
        if name in overrides:
            kept[name] = overrides[name]
    kept["preset"] = overrides.get("preset", preset)
    return {k: v for k, v in kept.items() if v is not None}


def rerender_document(
    info: JobInfo, renders: list[Any], overrides: Overrides, team: str = ""
) -> dict[str, Any]:
    """The manifest of a re-render: the selected renders' contents, styles and sizes, only
    those combinations (``only``), each as it was made but for the overrides, written under
    ``rerenders/<digest>/`` beside the job's outputs. The same selection and overrides make
    the same manifest, so the same job (re-rendering is idempotent)."""
    given = overrides.given()
    chosen = sorted(r.id for r in renders)
    digest = hashlib.sha256(json.dumps([info.job_id, chosen, given], sort_keys=True).encode())
    tag = digest.hexdigest()[:10]
    name = f"{info.meta.get('name', 'job')[:48]}-r{tag}"
    contents: dict[str, dict[str, Any]] = {}
    styles: dict[str, dict[str, Any]] = {}
    sizes: list[Any] = []
    only = []
    for r in sorted(renders, key=lambda r: r.id):
        shot: dict[str, Any] = {"uri": r.content}
        focus = given.get("focus", r.focus)
        if focus:
            shot["focus"] = list(focus)
        if r.mask:
            shot["mask"], shot["mask_strength"] = r.mask, r.mask_strength
        contents.setdefault(r.content, shot)
        styles.setdefault(
            r.style,
            {
                "name": r.style,
                "images": [{"uri": u, "weight": w} for u, w in r.style_images],
                "params": _style_params(r.params, given),
            },
        )
        if r.size not in sizes:
            sizes.append(r.size)
        only.append({"content": r.content, "style": r.style, "size": r.size})
    location = info.location.uri_of(f"rerenders/{tag}")
    document: dict[str, Any] = {
        "name": name,
        "priority": int(info.meta.get("priority") or 5),
        "output": {
            "location": location,
            "format": info.meta.get("format") or "png",
            "quality": int(info.meta.get("quality") or 92),
            "credentials": info.meta.get("credentials") == "1",
        },
        "content": list(contents.values()),
        "styles": list(styles.values()),
        "params": {"sizes": sizes},
        "only": only,
    }
    if info.meta.get("weights"):
        document["weights"] = info.meta["weights"]
    if info.meta.get("webhook") and info.meta.get("team", "") == team:
        document["notify"] = {"webhook": info.meta["webhook"]}  # the team's own receiver
    return document


def lineage_pairs(parents: list[Any], children: list[Any]) -> list[tuple[str, str]]:
    """(parent render, child render) by content, style and size: which new render re-renders
    which."""
    by = {(r.content, r.style, str(r.size)): r.id for r in parents}
    return [
        (by[(c.content, c.style, str(c.size))], c.id)
        for c in children
        if (c.content, c.style, str(c.size)) in by
    ]


@dataclass
class Outcome:
    """What a decision came to, for the page and the API."""

    recorded: int
    unchanged: int
    stale: list[dict[str, Any]]
    refused: list[dict[str, str]]  # missing or no output yet
    superseded: int
    reviewed: bool

    def said(self, decision: str) -> str:
        parts = [f"{self.recorded} render(s) {decision}"]
        if self.unchanged:
            parts.append(f"{self.unchanged} already so")
        if self.superseded:
            parts.append(f"{self.superseded} earlier version(s) superseded")
        if self.stale:
            first = self.stale[0]["current"] or {}
            parts.append(
                f"{len(self.stale)} not recorded: decided meanwhile by another reviewer "
                f"(now {first.get('decision', 'undecided')} by {first.get('by', '?')}); "
                "look again and decide"
            )
        if self.refused:
            parts.append(f"{len(self.refused)} refused ({self.refused[0]['why']})")
        if self.reviewed:
            parts.append("every output of the job now has a decision")
        return "; ".join(parts)


WHY = {"missing": "no such render", "no-output": "it has no output to review yet"}


def decide(
    store: JobStore,
    app: Any,
    job_id: str,
    decision: Literal["approved", "rejected"],
    renders: list[tuple[str, int | None]],
    note: str = "",
    reviewer: str = "",
    supersede: bool = True,
) -> Outcome | None:
    """Decide, then act on what it came to: the job's summary and cost table written again
    (a bookkeeping task, which then sends job.reviewed where every output now has a
    decision, so the summary it points to has them); an approved re-render superseding the
    render it re-renders (``supersede``), and a re-render whose approval is withdrawn giving
    that render its earlier decision back. None where the job is gone."""
    done = store.decide(job_id, decision, renders, note, reviewer)
    if done.gone:
        return None
    _follow_up(app, job_id, done)
    recorded = [r.render for r in done.results if r.outcome == "recorded"]
    superseded = 0
    parents = store.lineage(job_id, recorded) if recorded else {}
    for rid, (pjob, prid) in parents.items():
        if decision == "approved" and supersede:
            older = store.decide(
                pjob, "superseded", [(prid, None)], "", reviewer, f"{job_id} {rid}"
            )
            superseded += older.count("recorded")
        elif decision != "approved":
            older = _restore(store, pjob, prid, f"{job_id} {rid}")
        else:
            continue
        if older is not None and not older.gone:
            _follow_up(app, pjob, older)
    return Outcome(
        recorded=len(recorded),
        unchanged=done.count("unchanged"),
        stale=[
            {"render": r.render, "version": r.version, "current": r.review}
            for r in done.results
            if r.outcome == "stale"
        ],
        refused=[
            {"render": r.render, "why": WHY[r.outcome]} for r in done.results if r.outcome in WHY
        ],
        superseded=superseded,
        reviewed=done.reviewed,
    )


def _restore(store: JobStore, job_id: str, render_id: str, newer: str) -> Any:
    """A render superseded by ``newer`` gets back the decision it had (undecided if none),
    now that ``newer`` is no longer approved; unless it was decided since (its version)."""
    review = store.reviews(job_id, [render_id]).get(render_id) or {}
    if review.get("decision") != "superseded" or review.get("superseded_by") != newer:
        return None
    was = review.get("was") or {}
    return store.decide(
        job_id, was.get("decision", ""), [(render_id, review.get("version", 0))],
        was.get("note", ""), was.get("by", ""),
    )  # fmt: skip


def _follow_up(app: Any, job_id: str, done: Any) -> None:
    """The publication (and with it job.reviewed, where due) of a job whose decisions
    changed."""
    if done.publish or done.reviewed:
        review_published(app, job_id)


Filters = dict[str, Any]


def selected(
    store: JobStore,
    job_id: str,
    filters: Filters,
    limit: int = SELECTION_LIMIT,
    with_output: bool = False,
) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Every (render, state) of the job matching ``filters`` (status, style, size, content
    (partial), decision), page by page, at most ``limit`` (the caller learns it was cut by
    getting ``limit`` of them); ``with_output``: only done or skipped renders, counted."""
    after, taken = "", 0
    while True:
        page = store.renders_page(
            job_id,
            status=filters.get("status"),
            style=filters.get("style"),
            size=filters.get("size"),
            content=filters.get("content"),
            decision=filters.get("decision"),
            contains=True,
            limit=200,
            after=after,
        )
        for render, state in page.renders:
            if with_output and state.get("status") not in ("done", "skipped"):
                continue
            yield render, state
            taken += 1
            if taken >= limit:
                return
        if not page.next:
            return
        after = page.next


@dataclass(frozen=True)
class Entry:
    """One file of an export: its name in the zip, where it is, and its CSV row."""

    name: str
    job: JobInfo
    key: str
    row: dict[str, Any]


EXPORT_COLUMNS = (
    "key", "render", "job", "content", "style", "size", "decision", "reviewer", "note",
    "device", "cost_device_seconds",
)  # fmt: skip


def export_entries(store: JobStore, info: JobInfo, filters: Filters) -> Iterator[Entry]:
    """The files of an export, in render order: each render matching ``filters`` with an
    output, its copies too. ``decision`` ``approved`` (the default) also takes the approved
    newer version of a render that was superseded (a re-render, wherever it was approved),
    named in the zip by its key under this job's location. Bounded memory: a page at a
    time."""
    decision = filters.get("decision", "approved")
    wanted = dict(filters, decision=None if decision in ("approved", "any") else decision)
    for render, state in selected(store, info.job_id, wanted, limit=10**9):
        if state.get("status") not in ("done", "skipped"):
            continue
        review = state.get("review") or {}
        if decision == "approved" and review.get("decision") != "approved":
            found = _approved_version(store, review)
            if found is None:
                continue
            yield from _entries(info, *found)
            continue
        yield from _entries(info, info, render, state)


def _approved_version(store: JobStore, review: dict[str, Any]) -> tuple[Any, ...] | None:
    """The approved newer version of a superseded render: (its job, render, state)."""
    for _ in range(VERSION_DEPTH):
        if review.get("decision") != "superseded" or not review.get("superseded_by"):
            return None
        job_id, rid = review["superseded_by"].split(" ", 1)
        job = store.get(job_id)
        found = store.render(job_id, rid) if job else None
        if found is None:
            return None
        render, state = found
        review = store.reviews(job_id, [rid]).get(rid) or {}
        if review.get("decision") == "approved":
            return job, render, state | {"review": review}
    return None


def _entries(top: JobInfo, job: JobInfo, render: Any, state: dict[str, Any]) -> Iterator[Entry]:
    review = state.get("review") or {}
    base = str(top.location).rstrip("/") + "/"
    for style, key in ((render.style, render.key), *render.copies):
        uri = job.location.uri_of(key)
        name = uri[len(base) :] if uri.startswith(base) else f"{job.job_id}/{key}"
        row = {
            "key": name,
            "render": render.id,
            "job": job.job_id,
            "content": render.content_name,
            "style": style,
            "size": str(render.size),
            "decision": review.get("decision", ""),
            "reviewer": review.get("by", ""),
            "note": review.get("note", ""),
            "device": state.get("device") or "",
            "cost_device_seconds": (
                f"{state.get('seconds') or 0:.3f}"
                if state.get("device") and key == render.key
                else "0"
            ),
        }
        yield Entry(name, job, key, row)
