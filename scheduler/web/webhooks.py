"""The webhooks (job.ended, job.reviewed), declared in the OpenAPI document's ``webhooks``
section: what the bookkeeping worker POSTs to a manifest's ``notify.webhook``
(common/notify.py), and how a receiver checks it (docs/campaigns.md has the snippet)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header
from pydantic import BaseModel, Field

from scheduler.web.models import Cost, Failure

router = APIRouter()


class Counts(BaseModel):
    done: int
    skipped: int
    failed: int
    cancelled: int


class JobEnded(BaseModel):
    event: str = Field(description="job.ended")
    delivery: str = Field(description="One id per job end: drop a repeat of one already seen")
    job: str
    name: str | None
    status: str = Field(description="done, failed or cancelled")
    outcome: str = Field(description="succeeded, partial (renders failed), failed or cancelled")
    headline: str = Field(description="The end in words, failures counted")
    reason: str | None
    total: int
    counts: Counts
    failures: list[Failure] = Field(description="Up to 20 failed renders")
    cost: Cost
    summary: str = Field(description="The URI of the job's summary.json")
    finished: float


@router.post(
    "job.ended",
    summary="A job ended",
    description="POSTed once per job end (retried with backoff until a 2xx). Verify "
    "X-Stylebatch-Signature before trusting the body: `t=<unix time>,v1=<hex>[,v1=<hex>]`, "
    "each v1 the HMAC-SHA256 of `<t>.<raw body>` under the team's webhook secret (two while "
    "a secret is rotated); refuse a t more than 300 s old.",
)
def job_ended(
    body: JobEnded,
    x_stylebatch_signature: Annotated[str, Header(description="t=...,v1=...")],
    x_stylebatch_delivery: Annotated[str, Header(description="The delivery id again")],
) -> None:
    """Declared, never served."""


class ReviewCounts(BaseModel):
    approved: int
    rejected: int
    superseded: int


class JobReviewed(BaseModel):
    event: str = Field(description="job.reviewed")
    delivery: str = Field(description="One id per job: drop a repeat of one already seen")
    job: str
    name: str | None
    review: ReviewCounts
    outputs: int = Field(description="Outputs (done or skipped renders), each now decided")
    summary: str = Field(description="The URI of the job's summary.json (review section)")
    reviewed: float = Field(description="When the last decision was made (Unix time)")


@router.post(
    "job.reviewed",
    summary="Every output of an ended job has a review decision",
    description="POSTed once per job, the first time every output (a done or skipped render) "
    "of the ended job has a decision; signed, retried and verified as job.ended.",
)
def job_reviewed(
    body: JobReviewed,
    x_stylebatch_signature: Annotated[str, Header(description="t=...,v1=...")],
    x_stylebatch_delivery: Annotated[str, Header(description="The delivery id again")],
) -> None:
    """Declared, never served."""
