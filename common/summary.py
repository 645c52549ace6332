"""The per-job summary: every render with its inputs, parameters, output and outcome."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from common.expand import JobPlan, Render

STATUSES = ("pending", "done", "skipped", "failed", "cancelled")


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
    rendered_by: str | None = None  # for a skipped render: the job that made its output

    @classmethod
    def of(cls, render: Render, uri: str) -> RenderRecord:
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
            renders=[RenderRecord.of(r, plan.location.uri_of(r.key)) for r in plan.renders],
        )

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for record in self.renders:
            counts[record.status] += 1
        return counts

    def to_json(self) -> bytes:
        data = asdict(self)
        data["counts"] = self.counts()
        return json.dumps(data, indent=2, sort_keys=False).encode()
