"""Review decisions and versions: a render with an output is approved or rejected (with a note
and the reviewer's team), each change bumping the render's review version so that a stale
write is refused, never lost (review.lua); and a re-render's lineage, both ways
(add_versions.lua). Mixed into JobStore."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from common.state import keys
from common.state.keys import JobKeys
from common.state.model import REVIEW_DECISIONS as DECISIONS

REVIEW_FILTERS = (*DECISIONS, "undecided")
REVIEW_CHUNK = 200  # renders per script: each stays well under a millisecond


@dataclass(frozen=True)
class Reviewed:
    """One render's answer: ``recorded``, ``unchanged``, ``stale`` (its version moved on
    since the reviewer saw it: ``review`` is the decision that stands), ``missing`` (no such
    render) or ``no-output`` (not done or skipped: nothing to review yet)."""

    render: str
    outcome: str
    version: int
    review: dict[str, Any] | None


@dataclass
class Decided:
    """What a decision came to: ``gone`` (the job expired or never was), whether it made the
    job's review complete (``reviewed``), whether its publication is due (a task writes the
    summary and cost table again), and each render's answer."""

    gone: bool = False
    reviewed: bool = False
    publish: bool = False
    results: list[Reviewed] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(1 for r in self.results if r.outcome == outcome)


class ReviewWrites:
    """Decisions, their publication, and lineage."""

    r: Any
    q: Any
    scripts: Any

    def decide(
        self,
        job_id: str,
        decision: str,
        renders: list[tuple[str, int | None]],
        note: str = "",
        reviewer: str = "",
        superseded_by: str = "",
    ) -> Decided:
        """Decide on ``renders`` ((render id, the review version its reviewer saw, or None for
        any)), in scripts of REVIEW_CHUNK renders each (review.lua). ``decision`` '' makes
        them undecided again (a superseded render whose newer version lost its approval)."""
        assert decision in (*DECISIONS, ""), decision
        job = JobKeys(job_id)
        ks = [job.record, job.states, job.reviews, keys.WEBHOOKS]
        out = Decided()
        for i in range(0, max(1, len(renders)), REVIEW_CHUNK):
            chunk = renders[i : i + REVIEW_CHUNK]
            args: list[Any] = [decision, note, reviewer, job_id]
            for rid, seen in chunk:
                args += [rid, "" if seen is None else int(seen), superseded_by]
            answer = self.scripts.run("review", ks, args)
            if answer[0] == "gone":
                return Decided(gone=True)
            out.reviewed = out.reviewed or answer[1] == 1
            out.publish = out.publish or answer[2] == 1
            rest = answer[3:]
            for j in range(0, len(rest), 4):
                rid, outcome, version, raw = rest[j : j + 4]
                review = json.loads(raw) if raw else None
                out.results.append(Reviewed(rid, outcome, int(version), review))
        return out

    def take_review_publish(self, job_id: str) -> str:
        """``publish`` | ``none`` | ``wait`` (review_publish.lua)."""
        return self.scripts.run("review_publish", [JobKeys(job_id).record], [])

    def add_versions(self, job_id: str, pairs: list[tuple[str, str]]) -> bool:
        """Its renders gain versions: (render id, "<job> <render>" of a re-render of it)."""
        return self._lineage(job_id, JobKeys(job_id).versions, "versions", pairs)

    def set_lineage(self, job_id: str, pairs: list[tuple[str, str]]) -> bool:
        """A re-render job's renders: (render id, "<job> <render>" it re-renders)."""
        return self._lineage(job_id, JobKeys(job_id).lineage, "lineage", pairs)

    def _lineage(self, job_id: str, key: str, mode: str, pairs: list[tuple[str, str]]) -> bool:
        done = True
        for i in range(0, len(pairs), REVIEW_CHUNK):
            args = [mode, *(x for pair in pairs[i : i + REVIEW_CHUNK] for x in pair)]
            done = bool(self.scripts.run("add_versions", [JobKeys(job_id).record, key], args))
        return done

    # reads
    def reviews(self, job_id: str, render_ids: list[str]) -> dict[str, dict[str, Any]]:
        """render -> its decision (those decided), a thousand at a time."""
        out = {}
        for i in range(0, len(render_ids), 1000):
            chunk = render_ids[i : i + 1000]
            for rid, raw in zip(chunk, self.q.hmget(JobKeys(job_id).reviews, chunk), strict=True):
                if raw:
                    out[rid] = json.loads(raw)
        return out

    def all_reviews(self, job_id: str) -> dict[str, dict[str, Any]]:
        """Every decision of the job (HSCAN, in pages)."""
        return {k: json.loads(v) for k, v in self.q.hscan_iter(JobKeys(job_id).reviews, count=1000)}

    def versions(self, job_id: str, render_id: str) -> list[tuple[str, str]]:
        """(job, render) of each re-render of this render, oldest first."""
        raw = self.q.hget(JobKeys(job_id).versions, render_id)
        return [tuple(v.split(" ", 1)) for v in json.loads(raw)] if raw else []

    def lineage(self, job_id: str, render_ids: list[str]) -> dict[str, tuple[str, str]]:
        """render -> (job, render) it re-renders, for those of a re-render job."""
        if not render_ids:
            return {}
        found = self.q.hmget(JobKeys(job_id).lineage, render_ids)
        return {r: tuple(v.split(" ", 1)) for r, v in zip(render_ids, found, strict=True) if v}
