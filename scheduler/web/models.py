"""The API's answers as typed models: what the OpenAPI document declares is what is sent
(FastAPI serialises every answer through its model), and Schemathesis checks the two agree."""

from __future__ import annotations

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
    links: RenderLinks


class RenderDetail(Render):
    params: dict
    weights: str
    credentials_planned: bool


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
