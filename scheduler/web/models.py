"""The API's answers as typed models: what the OpenAPI document declares is what is sent
(FastAPI serialises every answer through its model), and Schemathesis checks the two agree."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Cost(BaseModel):
    device_seconds: dict[str, float] = Field(description="By device type (cpu, cuda:<card>)")
    pixel_iterations: float
    outputs: int = Field(description="Output files written, each copy counted once")


class Failure(BaseModel):
    render: str
    content: str | None = None
    style: str | None = None
    size: str | int | None = None
    error: str | None = None


class ReviewCounts(BaseModel):
    approved: int
    rejected: int
    superseded: int = Field(description="Replaced by an approved newer version (a re-render)")
    undecided: int = Field(description="Outputs (done or skipped renders) with no decision")


class JobLinks(BaseModel):
    self: str
    page: str
    renders: str


class Job(BaseModel):
    """A job as the jobs list shows it."""

    job: str
    name: str | None
    status: str = Field(description="running, finalizing, done, failed or cancelled")
    outcome: str | None = Field(
        description="Once ended: succeeded, partial (some renders failed), failed or cancelled"
    )
    headline: str = Field(description="The state in words, with failures counted")
    cancel_requested: bool
    reason: str | None
    total: int = Field(description="Renders")
    outputs_planned: int = Field(description="Output keys: renders plus their copies")
    pending: int
    running: int
    done: int
    skipped: int
    failed: int
    cancelled: int
    created: float | None
    finished: float | None
    eta_seconds: float | None
    cost: Cost
    review: ReviewCounts
    parent: str | None = Field(None, description="The job this one re-renders, if it does")
    links: JobLinks


class Facets(BaseModel):
    styles: list[str] = []
    sizes: list[str] = []
    contents: int = 0


class Plan(BaseModel):
    """What a manifest comes to before anything runs."""

    job: str
    renders: int
    outputs: int = Field(description="Output keys written: renders plus copies")
    copies: int = Field(
        description="Outputs that are another key of the same render (style names that "
        "resolve to the same render): rendered once, written to each key"
    )
    collapsed: int = Field(description="Entries dropped as exact duplicates (same render, key)")
    contents: int
    styles: int
    notes: list[str]


class JobDetail(Job):
    """A job as `stylebatch status --json` states it."""

    output: str
    webhook_status: str | None
    failures: list[Failure]
    facets: Facets
    blocked: str | None = Field(
        None, description="Why the job cannot move now (Redis out of memory), if it cannot"
    )
    plan: Plan | None = Field(None, description="On submit: what the manifest came to")


class JobPage(BaseModel):
    jobs: list[Job]
    next: str | None = Field(description="Cursor of the next page (also the Link header)")


class StyleImage(BaseModel):
    uri: str
    weight: float


class Copy(BaseModel):
    style: str
    output: str


class RenderLinks(BaseModel):
    self: str
    page: str
    thumbnail: str | None = None
    image: str | None = None


class Review(BaseModel):
    decision: str = Field(description="approved, rejected or superseded")
    note: str = ""
    by: str = Field("", description="The reviewer's team")
    at: float = Field(0, description="When (Unix time, the Redis server's clock)")
    version: int = Field(description="The render's review version: send it with a change")
    superseded_by: str | None = Field(None, description="'<job> <render>' of the newer version")
    was: dict | None = Field(
        None, description="For a superseded render: the decision it had, given back if the "
        "newer version's approval is withdrawn"
    )  # fmt: skip


class Version(BaseModel):
    job: str
    render: str
    page: str


class Render(BaseModel):
    render: str
    content: str
    content_uri: str
    style: str
    style_images: list[StyleImage]
    size: str
    mask: str | None
    status: str
    error: str | None
    seconds: float | None
    device: str | None
    pixel_iterations: float | None
    output: str
    copies: list[Copy] = Field(description="The same render under other style names' keys")
    review: Review | None = Field(description="Its decision; none while undecided")
    review_version: int = Field(description="Send it with a decision (0 while undecided)")
    links: RenderLinks


class RenderDetail(Render):
    params: dict
    weights: str
    credentials_planned: bool
    versions: list[Version] = Field(description="Its re-renders, oldest first")
    parent: Version | None = Field(description="The render this one re-renders")


class Decision(BaseModel):
    """One render's decision: send the review version you saw (0 while undecided); a
    decision made meanwhile by someone else is not overwritten (409 ``stale``)."""

    decision: Literal["approved", "rejected"]
    note: str = Field("", max_length=2000)
    version: int = Field(ge=0, description="The render's review_version as you saw it")
    supersede: bool = Field(
        True, description="Approving a re-render marks the render it re-renders superseded"
    )


class Decided(BaseModel):
    job: str
    render: str
    review: Review


class Filter(BaseModel):
    status: Literal["pending", "running", "done", "skipped", "failed", "cancelled"] | None = None
    style: str | None = Field(None, max_length=300)
    size: str | None = Field(None, max_length=300)
    content: str | None = Field(None, max_length=300, description="Part of the content's name")
    decision: Literal["approved", "rejected", "superseded", "undecided"] | None = None


class Picked(BaseModel):
    render: str = Field(max_length=100)
    version: int = Field(ge=0)


class Decisions(BaseModel):
    """Many renders at once: a selection (each with the version seen), or every render a
    filter matches (each as it stands when read, up to 10,000)."""

    decision: Literal["approved", "rejected"]
    note: str = Field("", max_length=2000)
    renders: list[Picked] | None = Field(None, max_length=1000)
    filter: Filter | None = None
    supersede: bool = True


class Stale(BaseModel):
    render: str
    version: int
    current: Review | None


class Refusal(BaseModel):
    render: str
    why: str


class DecisionsMade(BaseModel):
    job: str
    recorded: int
    unchanged: int
    stale: list[Stale] = Field(description="Decided meanwhile by someone else: not changed")
    refused: list[Refusal] = Field(description="No such render, or no output yet")
    superseded: int
    reviewed: bool = Field(description="Every output of the job now has a decision")
    truncated: bool = Field(
        False, description="The filter matched more than 10,000 renders: only the first were "
        "decided; ask again for the rest"
    )  # fmt: skip
    detail: str


class Rerender(BaseModel):
    """A new job from renders of this one, changed by ``overrides`` (style_weight, preset,
    seed, palette, focus, color): a selection of render ids, or a filter."""

    renders: list[str] | None = Field(None, max_length=10_000)
    filter: Filter | None = None
    overrides: dict | None = Field(
        None, description="What changes (at least one); each checked, every problem named"
    )


class RenderPage(BaseModel):
    job: str
    renders: list[Render]
    next: str | None = Field(description="Cursor of the next page (also the Link header)")


class Slot(BaseModel):
    slot: str
    job: str | None
    status: str | None


class Schedule(BaseModel):
    name: str
    cron: str
    timezone: str
    output: str
    next: list[str]
    past: list[Slot]


class Schedules(BaseModel):
    schedules: list[Schedule]


class Cancelled(BaseModel):
    job: str
    cancel_requested: bool = Field(description="False where the job had already ended")
    status: str
    detail: str


class Retried(BaseModel):
    job: str
    retried: int
    detail: str


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    redis: str
    s3: str
