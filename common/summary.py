"""The per-job summary: every render with its inputs, parameters, output and outcome."""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from common.expand import JobPlan, Render

STATUSES = ("pending", "done", "skipped", "failed", "cancelled")
CSV_COLUMNS = (
    "job", "render", "content", "style", "size", "status", "device", "device_seconds",
    "pixel_iterations", "outputs", "decision", "reviewer",
)  # fmt: skip
DECISIONS = ("approved", "rejected", "superseded")


@dataclass
class RenderRecord:
    id: str
    content: str
    style: str
    style_images: list[list[Any]]
    size: int
    params: dict[str, Any]
    key: str
    uri: str
    status: str = "pending"
    seconds: float | None = None
    error: str | None = None
    weights_id: str | None = None
    losses: dict[str, float] | None = None
    inputs: dict[str, str] = field(default_factory=dict)  # uri -> content identity
    mask: list[Any] | None = None  # [mask uri or "alpha", strength] for a protected render
    rendered_by: str | None = None  # for a skipped render: the job that made its output
    device: str | None = None  # where this job rendered it (cpu, or cuda:<card>)
    pixel_iterations: float | None = None  # output pixels x iterations, summed over scales
    # the same render under other style names: [{"style", "key", "uri"}], written with it
    copies: list[dict[str, str]] = field(default_factory=list)
    # its review: {"decision", "note", "by", "at", "version"[, "superseded_by"]}, or None
    review: dict[str, Any] | None = None

    @property
    def outputs(self) -> int:
        """Output files this render's making wrote: its own and its copies'."""
        return 1 + len(self.copies)

    @classmethod
    def of(cls, render: Render, uri: str, location: Any = None) -> RenderRecord:
        copies = [
            {"style": s, "key": k, "uri": location.uri_of(k) if location else k}
            for s, k in render.copies
        ]
        return cls(
            id=render.id,
            content=render.content,
            style=render.style,
            style_images=[[u, w] for u, w in render.style_images],
            size=render.size,
            params=render.params,
            key=render.key,
            uri=uri,
            inputs=render.identities,
            mask=[render.mask, render.mask_strength] if render.mask else None,
            copies=copies,
        )


@dataclass
class Summary:
    job_id: str
    name: str
    source: str
    output: str
    weights: str
    renders: list[RenderRecord]
    engine: str = ""
    started: float = field(default_factory=time.time)
    finished: float | None = None

    @classmethod
    def of(cls, plan: JobPlan) -> Summary:
        return cls(
            job_id=plan.job_id,
            name=plan.name,
            source=plan.source,
            output=str(plan.location),
            weights=plan.weights,
            renders=[
                RenderRecord.of(r, plan.location.uri_of(r.key), plan.location) for r in plan.renders
            ],
        )

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for record in self.renders:
            counts[record.status] += 1
        return counts

    def outcome(self) -> str | None:
        """As the job's (common/state.py ``JobInfo.outcome``): succeeded, partial, or None
        before it ends."""
        if self.finished is None:
            return None
        return "partial" if self.counts()["failed"] else "succeeded"

    def review(self) -> dict[str, Any]:
        """Review progress: decisions by kind, and outputs (done or skipped) undecided."""
        counts = dict.fromkeys(DECISIONS, 0)
        undecided = 0
        for r in self.renders:
            decision = (r.review or {}).get("decision")
            if decision in counts:
                counts[decision] += 1
            elif r.status in ("done", "skipped"):
                undecided += 1
        return counts | {"undecided": undecided}

    def cost(self) -> dict[str, Any]:
        """What this job spent: device-seconds by device type, pixel-iterations, outputs."""
        seconds: dict[str, float] = {}
        for r in self.renders:
            if r.device and r.seconds:
                seconds[r.device] = seconds.get(r.device, 0.0) + r.seconds
        return {
            "device_seconds": seconds,
            "pixel_iterations": sum(r.pixel_iterations or 0 for r in self.renders if r.device),
            "outputs": sum(r.outputs for r in self.renders if r.status == "done"),
        }

    def cost_csv(self) -> bytes:
        """One row per render, for a finance team to sum: what this job spent on it (a render
        skipped because an earlier job made it costs nothing here). ``outputs`` counts each
        file written once: a render's own and its copies' (one making, many keys)."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for r in self.renders:
            ran = bool(r.device)
            seconds = f"{r.seconds or 0:.3f}" if ran else "0"
            work = f"{r.pixel_iterations or 0:.0f}" if ran else "0"
            row = [self.job_id, r.id, r.content, r.style, r.size, r.status, r.device or ""]
            review = r.review or {}
            row += [seconds, work, r.outputs if r.status == "done" else 0]
            writer.writerow([*row, review.get("decision", ""), review.get("by", "")])
        return out.getvalue().encode()

    def to_json(self) -> bytes:
        data = asdict(self)
        data["counts"] = self.counts()
        data["outcome"] = self.outcome()
        data["outputs_planned"] = sum(r.outputs for r in self.renders)
        data["cost"] = self.cost()
        data["review"] = self.review()
        return json.dumps(data, indent=2, sort_keys=False).encode()
