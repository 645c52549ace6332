"""A task's soft time limit is never swallowed (issue 27): Celery raises it inside whatever call
the task is making, as an ``Exception``, so every broad handler around a storage call must let
it through. Each storage call site here has it raised from inside botocore, and must pass it
on as it is, not as a storage error."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
from billiard.exceptions import SoftTimeLimitExceeded

from common.settings import Settings
from common.storage import s3_client
from common.uris import Location

SETTINGS = Settings(
    s3_endpoint="http://127.0.0.1:1", allowed_inputs=("s3://",), allowed_outputs=("s3://",)
)


@pytest.fixture(autouse=True)
def limit_inside_botocore(monkeypatch):
    """Every S3 request raises the soft limit from inside botocore, as Celery would."""
    from botocore.client import BaseClient

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    s3_client.cache_clear()

    def limited(self, operation, params):
        raise SoftTimeLimitExceeded()

    with mock.patch.object(BaseClient, "_make_api_call", limited):
        yield
    s3_client.cache_clear()


def _render():
    from common.expand import Render

    return Render(
        id="a" * 24, content="s3://ins/x.png", content_name="x", style="s",
        style_images=(("s3://ins/s.png", 1.0),), size=32, params={}, key="x/s-32.png",
        weights="random:0", identities={},
    )  # fmt: skip


def _sites():
    from common import inputs, listing, storage
    from common.outputs import earlier
    from scheduler.preflight import check_location
    from workers.cache import InputCache
    from workers.copies import complete_copies

    store = storage.S3Storage(Location("s3", "out", "p"), SETTINGS)
    budget = listing.Budget.of(SETTINGS)
    return {
        "S3Storage.get": lambda: store.get("k"),
        "S3Storage.metadata": lambda: store.metadata("k"),
        "S3Storage.put": lambda: store.put("k", b"x", "image/png", {}),
        "S3Storage.put_output": lambda: store.put_output("k", b"x", "image/png", {}, "r"),
        "read_input": lambda: storage.read_input("s3://ins/x.png", SETTINGS),
        "read_input (an ETag)": lambda: storage.read_input("s3://ins/x.png", SETTINGS, "e"),
        "s3_get": lambda: storage.s3_get(s3_client(SETTINGS), "ins", "x.png"),
        "identify (HEAD)": lambda: inputs.identify({"s3://ins/x.png": "content[0]"}, SETTINGS),
        "identify (a listing)": lambda: inputs.identify(
            {f"s3://ins/f/{i}.png": "content[0]" for i in range(30)}, SETTINGS
        ),
        "find_inputs": lambda: listing.find_inputs("s3://ins/f/*.png", False, SETTINGS, budget),
        "earlier": lambda: earlier(store, _render()),
        "complete_copies": lambda: complete_copies(store, _with_copy(_render()), "image/png"),
        "InputCache.read": lambda: InputCache(SETTINGS).read("s3://ins/x.png", "etag:e"),
        "check_location (preflight)": lambda: check_location(Location("s3", "out", "p"), SETTINGS),
    }


def _with_copy(render):
    import dataclasses

    return dataclasses.replace(render, copies=(("t", "x/t-32.png"),))


@pytest.mark.parametrize("site", sorted(_sites()))
def test_the_soft_limit_passes_through_every_storage_call_site(site, tmp_path, monkeypatch):
    monkeypatch.setattr(Path, "home", lambda: tmp_path)
    import dataclasses

    global SETTINGS
    SETTINGS = dataclasses.replace(SETTINGS, cache_dir=tmp_path / "cache")
    with pytest.raises(SoftTimeLimitExceeded):
        _sites()[site]()


def test_a_retry_that_cannot_be_published_requeues_the_message():
    """Celery rejects a task's message without requeueing when it cannot publish the retry
    (Redis out of memory): the helper requeues it instead, so no task message is dropped."""
    from celery.exceptions import Reject

    from common.queue import retry

    class Task:
        def retry(self, exc=None, countdown=None):
            raise Reject(exc, requeue=False)  # what Celery does when the publish fails

    with pytest.raises(Reject) as info:
        retry(Task(), RuntimeError("OOM command not allowed"), 5)
    assert info.value.requeue is True
