"""The web front (scheduler/web, docs/web.md) against a real fleet: Redis, SeaweedFS and Celery
workers rendering with the test weights. The API as scripts use it, two teams against each
other, the anti-forgery check, escaping, bad input, Redis and S3 going away, and a 100,000-
render job's pages measured. The pages in a real browser: tests/deploy/test_web_browser.py."""

from __future__ import annotations

import dataclasses
import io
import json

import httpx
import pytest
import yaml
from PIL import Image

from scheduler.web.app import create_app
from tests.support.big_jobs import big_job
from tests.support.services import RedisServer, wait_for
from tests.support.web import (
    TOKENS,
    bearer,
    document,
    log_in,
    serving,
    session_csrf,
    wait_ended,
    web_settings,
)


@pytest.fixture(scope="module")
def fleet(fleet_factory):
    return fleet_factory(["cpu0", "bookkeeping"])


@pytest.fixture(scope="module")
def served(fleet, tmp_path_factory):
    with serving(fleet, tmp_path_factory.mktemp("web")) as server:
        yield server


@pytest.fixture
def client(served):
    with httpx.Client(base_url=served.url, timeout=30) as c:
        yield c


def post(client, team: str, data, kind: str = "yaml") -> httpx.Response:
    body = yaml.safe_dump(data) if kind == "yaml" else json.dumps(data)
    mime = "application/yaml" if kind == "yaml" else "application/json"
    return client.post("/jobs", content=body, headers={**bearer(team), "Content-Type": mime})


def test_submit_is_idempotent_and_the_job_reads_as_status_json(fleet, client):
    first = post(client, "alpha", document("web-one"))
    assert first.status_code == 201, first.text
    job = first.json()["job"]
    again = post(client, "alpha", document("web-one"), kind="json")  # same manifest, as JSON
    assert again.status_code == 200 and again.json()["job"] == job
    record = wait_ended(client, job)
    assert record["status"] == "done" and record["done"] == 2 and record["failed"] == 0, record
    assert record["cost"]["outputs"] == 2 and record["cost"]["device_seconds"]["cpu"] > 0
    assert record["eta_seconds"] is None and record["failures"] == []
    cli = fleet.cli("status", job, "--json")
    facts = json.loads(cli.stdout)
    for key in ("status", "done", "skipped", "failed", "total", "cost", "failures", "output"):
        assert facts[key] == record[key], key  # the same facts as `status --json`
    listed = client.get("/jobs", headers=bearer("alpha")).json()["jobs"]
    assert [j["job"] for j in listed] == [job]

    renders = client.get(f"/jobs/{job}/renders", headers=bearer("alpha")).json()
    assert len(renders["renders"]) == 2 and renders["next"] is None
    starry = client.get(
        f"/jobs/{job}/renders", params={"style": "starry_night"}, headers=bearer("alpha")
    ).json()["renders"]
    assert [r["style"] for r in starry] == ["starry_night"]
    done = client.get(
        f"/jobs/{job}/renders", params={"status": "done", "limit": 1}, headers=bearer("alpha")
    ).json()
    assert len(done["renders"]) == 1 and done["next"]
    rest = client.get(
        f"/jobs/{job}/renders",
        params={"status": "done", "after": done["next"]},
        headers=bearer("alpha"),
    ).json()
    assert len(rest["renders"]) == 1 and rest["renders"][0]["render"] != done["renders"][0]
    assert (
        client.get(
            f"/jobs/{job}/renders", params={"status": "failed"}, headers=bearer("alpha")
        ).json()["renders"]
        == []
    )

    rid = starry[0]["render"]
    thumb = client.get(f"/jobs/{job}/renders/{rid}/thumbnail", headers=bearer("alpha"))
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size[0] > 0
    full = client.get(f"/jobs/{job}/renders/{rid}/image", headers=bearer("alpha"))
    assert full.status_code == 200 and Image.open(io.BytesIO(full.content)).format == "PNG"
    one = client.get(f"/jobs/{job}/renders/{rid}", headers=bearer("alpha")).json()
    assert one["params"]["preset"] == "draft" and one["seconds"] > 0
    sheet = client.get(f"/jobs/{job}/contact-sheet", headers=bearer("alpha"))
    assert sheet.status_code == 200 and sheet.content.startswith(b"\x89PNG")
    page = client.get(f"/ui/jobs/{job}", headers=bearer("alpha"))
    assert page.status_code == 200 and "done" in page.text
    gallery = client.get(f"/ui/jobs/{job}/gallery", headers=bearer("alpha"))
    assert gallery.text.count("/thumbnail") == 2


def test_teams_see_and_change_only_their_own_jobs(client):
    job = post(client, "alpha", document("web-one")).json()["job"]  # exists from above or new
    # a render beta's job below lacks (render ids name inputs, not jobs: its wave render's is
    # the same as alpha's)
    starry = {"style": "starry_night"}
    rid = client.get(f"/jobs/{job}/renders", params=starry, headers=bearer("alpha")).json()
    rid = rid["renders"][0]["render"]
    assert client.get(f"/jobs/{job}").status_code == 401  # no token
    assert client.get("/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get(f"/ui/jobs/{job}").status_code == 401  # the login page, 401
    paths = [f"/jobs/{job}", f"/jobs/{job}/renders", f"/jobs/{job}/renders/{rid}/thumbnail"]
    paths += [f"/ui/jobs/{job}", f"/ui/jobs/{job}/gallery", f"/jobs/{job}/contact-sheet"]
    for path in paths:
        assert client.get(path, headers=bearer("beta")).status_code == 404, path
    for action in ("cancel", "retry"):
        answer = client.post(f"/jobs/{job}/{action}", headers=bearer("beta"))
        assert answer.status_code == 404
    assert client.get("/jobs", headers=bearer("beta")).json()["jobs"] == []
    # a render of another job, and an unknown job: 404 with a reason
    other = post(client, "beta", document("web-beta", team="beta", styles=("wave",)))
    assert other.status_code == 201, other.text
    beta_job = other.json()["job"]
    crossed = client.get(f"/jobs/{beta_job}/renders/{rid}", headers=bearer("beta"))
    assert crossed.status_code == 404 and "has no render" in crossed.json()["detail"]
    assert client.get("/jobs/no-such-job", headers=bearer("beta")).status_code == 404
    wait_ended(client, beta_job, "beta")


def test_bad_manifests_get_every_problem_and_the_prefix_named(client):
    bad = document("web-bad")
    bad["params"]["sizes"] = ["huge"]
    bad["styles"][0].pop("image")
    answer = post(client, "alpha", bad)
    assert answer.status_code == 422
    wheres = [p["where"] for p in answer.json()["problems"]]
    assert len(wheres) >= 2 and any(w.startswith("styles") for w in wheres), wheres
    outside = post(client, "alpha", document("web-out", team="beta"))  # alpha writing beta's
    assert outside.status_code == 422
    assert outside.headers["content-type"] == "application/problem+json"
    text = json.dumps(outside.json())
    assert outside.json()["code"] == "output-refused"
    assert "s3://outputs/beta" not in text and "s3://outputs/alpha" in text  # its own, only
    reads = document("web-reads")
    reads["content"] = ["/etc/passwd"]
    assert post(client, "alpha", reads).status_code == 422
    headers = {**bearer("alpha"), "Content-Type": "application/yaml"}
    for body in (b"name: [unclosed", b"- a list", b"\xff\xfe", b"", b"null"):
        answer = client.post("/jobs", content=body, headers=headers)
        assert answer.status_code == 422 and answer.json()["problems"], body
    huge = b"name: x\n" + b"#" * (2 << 20)
    assert client.post("/jobs", content=huge, headers=headers).status_code == 413

    def chunks():
        for _ in range(40):
            yield b"#" * 65536  # no Content-Length: refused as it streams in

    assert client.post("/jobs", content=chunks(), headers=headers).status_code == 413
    form = {**bearer("alpha"), "Content-Type": "application/x-www-form-urlencoded"}
    streamed = client.post("/ui/jobs", content=(b"manifest=" + c for c in chunks()), headers=form)
    assert streamed.status_code == 413, streamed.text  # a page's form: the same limit


def test_forms_need_the_sessions_anti_forgery_value(client, served):
    job = post(client, "alpha", document("web-one")).json()["job"]
    login = log_in(client, "alpha")
    assert login.status_code == 303 and "samesite=strict" in login.headers["set-cookie"].lower()
    assert "httponly" in login.headers["set-cookie"].lower()
    assert TOKENS["alpha"] not in login.headers["set-cookie"]  # a session id, not the token
    assert client.get(f"/ui/jobs/{job}").status_code == 200  # the cookie is the session
    assert client.post(f"/ui/jobs/{job}/cancel").status_code == 403
    assert client.post(f"/ui/jobs/{job}/cancel", data={"csrf": "forged"}).status_code == 403
    assert client.post(f"/jobs/{job}/cancel").status_code == 403  # the API too, by cookie
    good = client.post(f"/ui/jobs/{job}/cancel", data={"csrf": session_csrf(client)})
    assert good.status_code == 303
    # the API by cookie, with the value in a form body: checked, then read as the manifest
    as_form = client.post("/jobs", data={"csrf": session_csrf(client)})
    assert as_form.status_code == 422 and as_form.json()["problems"], as_form.text
    client.cookies.clear()
    refused = client.post("/ui/login", data={"token": TOKENS["alpha"]})  # no form value
    assert refused.status_code == 403 and "sb_session" not in refused.headers.get("set-cookie")
    value = refused.text.split('name="login_csrf" value="')[1].split('"')[0]  # a fresh form
    wrong = client.post("/ui/login", data={"token": "wrong", "login_csrf": value})
    assert wrong.status_code == 401
    client.cookies.clear()


def test_job_state_is_rendered_escaped(fleet, client, tmp_path):
    from common.state import Held

    plan = fleet.plan(_manifest_file(tmp_path, document("web-xss")))
    evil = "<script>alert(1)</script>"
    plan = big_job(plan, 3)
    plan = dataclasses.replace(
        plan,
        job_id="web-xss-job-0123456789ab",
        name=evil,
        renders=[dataclasses.replace(r, style=evil, content_name=evil) for r in plan.renders],
    )
    store = fleet.store
    store.delete(plan.job_id)
    assert store.create(plan, team="alpha")
    rid = plan.renders[0].id
    claim = store.claim(plan.job_id, rid, "web|h|1|t", 60, 3)
    store.finish(Held(plan.job_id, rid, claim.attempt), "failed", error=evil)
    for path in ("", "/gallery", f"/renders/{rid}", "/contact-sheet"):
        page = client.get(f"/ui/jobs/{plan.job_id}{path}", headers=bearer("alpha"))
        assert page.status_code == 200, path
        assert "<script>alert" not in page.text and "&lt;script&gt;alert(1)" in page.text, path
    jobs = client.get("/ui", headers=bearer("alpha")).text
    assert "<script>alert" not in jobs and "&lt;script&gt;" in jobs
    store.delete(plan.job_id)


def test_a_job_recorded_before_the_render_index_is_indexed_on_first_read(fleet, client, tmp_path):
    """Jobs recorded by an earlier version have no render index, ended set or facets: the
    first read builds them (JobStore.index_recorded), keeping the job's retention."""
    from common.state import Held

    plan = big_job(fleet.plan(_manifest_file(tmp_path, document("web-old"))), 30)
    plan = dataclasses.replace(plan, job_id="web-old-job-0123456789ab")
    store = fleet.store
    store.delete(plan.job_id)
    assert store.create(plan, team="alpha")
    done, failed = plan.renders[3].id, plan.renders[7].id
    for rid, status in ((done, "done"), (failed, "failed")):
        claim = store.claim(plan.job_id, rid, "web|h|1|t", 60, 3)
        store.finish(Held(plan.job_id, rid, claim.attempt), status, error="bad")
    # as an earlier version recorded it
    store.r.delete(store.keys(plan.job_id).index, store.keys(plan.job_id).ended)
    store.r.hdel(store.keys(plan.job_id).record, "facets")
    try:
        listed = client.get(f"/jobs/{plan.job_id}/renders?limit=200", headers=bearer("alpha"))
        assert len(listed.json()["renders"]) == 30, listed.text
        assert store.r.hexists(store.keys(plan.job_id).record, "facets")
        assert store.r.ttl(store.keys(plan.job_id).index) == -1  # a running job's: kept
        for status, rid in (("done", done), ("failed", failed)):
            page = client.get(
                f"/jobs/{plan.job_id}/renders", params={"status": status}, headers=bearer("alpha")
            ).json()["renders"]
            assert [r["render"] for r in page] == [rid], status
        sizes = client.get(f"/jobs/{plan.job_id}", headers=bearer("alpha")).json()["facets"]
        assert sizes["sizes"] == [str(48 + i) for i in range(7)], sizes
        one = client.get(
            f"/jobs/{plan.job_id}/renders", params={"size": "50"}, headers=bearer("alpha")
        ).json()["renders"]
        assert len(one) == 4 and {r["size"] for r in one} == {"50"}
        assert store.index_recorded(plan.job_id) is False  # once per job
    finally:
        store.delete(plan.job_id)


def _manifest_file(folder, data):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_request_metrics_and_readiness(client, served):
    assert client.get("/ready").json() == {"redis": "ok", "s3": "ok"}
    text = client.get("/metrics").text
    assert 'stylebatch_web_requests_total{method="GET",route="/ready",status="200"}' in text
    assert "stylebatch_web_request_seconds_bucket" in text
    assert 'route="/jobs/{job_id}"' in text  # route templates, never job ids


def test_redis_away_is_a_503_that_names_it_and_the_server_recovers(tmp_path, fleet, s3_server):
    (tmp_path / "redis-web").mkdir()
    redis = RedisServer(tmp_path / "redis-web")
    try:
        settings = web_settings(
            dataclasses.replace(fleet.settings(), redis_url=redis.url(0)), tmp_path
        )
        with _client(settings) as web:
            assert web.get("/jobs", headers=bearer("alpha")).status_code == 200
            redis.stop()
            down = web.get("/jobs", headers=bearer("alpha"))
            assert down.status_code == 503 and "Redis" in down.json()["detail"]
            assert "Traceback" not in down.text
            ready = web.get("/ready")
            assert ready.status_code == 503 and ready.json()["redis"].startswith("unavailable")
            page = web.get("/ui", headers=bearer("alpha"))
            assert page.status_code == 503 and "Redis is unavailable" in page.text
            redis.start()
            wait_for(lambda: web.get("/jobs", headers=bearer("alpha")).status_code == 200, 20, "")
    finally:
        if redis.proc.poll() is None:
            redis.stop()


def _client(settings):
    from fastapi.testclient import TestClient

    return TestClient(create_app(settings), raise_server_exceptions=False)


def test_s3_away_is_a_503_that_names_it(client, s3_server):
    job = post(client, "alpha", document("web-one")).json()["job"]
    wait_ended(client, job)  # its outputs are written
    rid = client.get(f"/jobs/{job}/renders", headers=bearer("alpha")).json()["renders"][1]
    path = f"/jobs/{job}/renders/{rid['render']}/image"
    assert client.get(path, headers=bearer("alpha")).status_code == 200
    s3_server.stop()
    try:
        down = client.get(path, headers=bearer("alpha"))
        assert down.status_code == 503 and down.json()["service"] == "S3", down.text
        assert client.get("/ready").json()["s3"].startswith("unavailable")
        submit = post(client, "alpha", document("web-s3-away"))
        assert submit.status_code == 503 and "S3" in submit.json()["detail"], submit.text
    finally:
        s3_server.start()
    assert client.get(path, headers=bearer("alpha")).status_code == 200
    assert client.get("/ready").status_code == 200


@pytest.mark.slow
def test_a_100000_render_job_answers_as_fast_as_a_small_one(fleet, served, client, tmp_path):
    """Job page, gallery page (with its thumbnails) and the renders API of a 100,000-render
    job, each under 1 s, the gallery under 2 MB. Figures: bench/web_bench.py, docs/web.md."""
    from bench.web_bench import big_web_job, measure

    store = fleet.store
    job = big_web_job(store, fleet.plan(_manifest_file(tmp_path, document("web-big"))), tmp_path)
    try:
        figures = measure(client, job, bearer("alpha"))
    finally:
        store.delete(job)
    for name, (seconds, _) in figures.items():
        assert seconds < 1.0, (name, seconds)
    assert figures["gallery (done, with thumbnails)"][1] < 2_000_000
    assert figures["gallery"][1] < 2_000_000
