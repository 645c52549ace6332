"""The web front (scheduler/web, docs/web.md) against a real fleet: Redis, SeaweedFS and Celery
workers rendering with the test weights. The API as scripts use it, two teams against each
other, the anti-forgery check, escaping, bad input, Redis and S3 going away, and a 100,000-
render job's pages measured, and the pages in a real browser (Debian's chromium)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
from unittest import mock

import httpx
import pytest
import yaml
from PIL import Image

from common.errors import ConfigError
from common.settings import Settings
from common.teams import load_teams
from scheduler.web.app import create_app
from tests.fleet import Fleet, upload_inputs
from tests.services import RedisServer, wait_for
from tests.web_helpers import (
    GENEROUS,
    TOKENS,
    Served,
    bearer,
    log_in,
    session_csrf,
    web_settings,
)

DB = 15


def document(name: str, team: str = "alpha", styles=("starry_night", "wave"), **params) -> dict:
    return {
        "name": name,
        "output": {"location": f"s3://outputs/{team}/{name}"},
        "content": ["s3://inputs/img/tubingen.png"],
        "styles": [{"name": s, "image": f"s3://inputs/img/{s}.png"} for s in styles],
        "params": {
            "preset": "draft",
            "sizes": [40],
            "pyramid": {"start": 32, "ratio": 1.5, "iterations": 4},
            **params,
        },
    }


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, redis_server, s3_server, weights_file, images):
    folder = tmp_path_factory.mktemp("webfleet")
    upload_inputs(s3_server, images)
    stack = Fleet(folder, redis_server, s3_server, weights_file, db=DB)
    stack.store.r.flushdb()
    stack.start(["cpu0", "bookkeeping"])
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def served(fleet, tmp_path_factory):
    """The server in this process, with the fleet's settings and S3 keys (boto3 reads them
    from the environment, as in `stylebatch serve`)."""
    with mock.patch.dict(os.environ, fleet.settings_env()):
        settings = web_settings(fleet.settings(), tmp_path_factory.mktemp("web"))
        server = Served(create_app(settings))
        server.settings = settings
        yield server
        server.stop()


@pytest.fixture
def client(served):
    with httpx.Client(base_url=served.url, timeout=30) as c:
        yield c


def post(client, team: str, data, kind: str = "yaml") -> httpx.Response:
    body = yaml.safe_dump(data) if kind == "yaml" else json.dumps(data)
    mime = "application/yaml" if kind == "yaml" else "application/json"
    return client.post("/jobs", content=body, headers={**bearer(team), "Content-Type": mime})


def wait_ended(client, job: str, team: str = "alpha", timeout: float = 180) -> dict:
    found = {}

    def ended() -> bool:
        found.update(client.get(f"/jobs/{job}", headers=bearer(team)).json())
        return found["status"] in ("done", "failed", "cancelled")

    wait_for(ended, timeout, f"job {job}")
    return found


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
    from tests.test_scale import big_job

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
    from tests.test_scale import big_job

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


def test_teams_must_lie_within_the_fleets_prefixes(tmp_path):
    fleet = Settings(allowed_inputs=("s3://inputs",), allowed_outputs=("s3://outputs",))
    good = {"token_sha256": "a" * 64, "allowed_inputs": ["s3://inputs/a"]}
    with pytest.raises(ConfigError, match=r"'s3://outputs-evil/a' is not within"):
        load_teams(json.dumps({"a": {**good, "allowed_outputs": ["s3://outputs-evil/a"]}}), fleet)
    with pytest.raises(ConfigError, match="token_sha256"):
        load_teams(json.dumps({"a": {"allowed_outputs": ["s3://outputs/a"]}}), fleet)
    token = tmp_path / "token"
    token.write_text("a-token-from-a-mounted-secret\n")
    spec = tmp_path / "teams.yaml"
    entry = {"token_file": str(token), "allowed_inputs": ["s3://inputs"]}
    spec.write_text(yaml.safe_dump({"a": {**entry, "allowed_outputs": ["s3://outputs/a"]}}))
    teams = load_teams(str(spec), fleet)
    from common.teams import authenticate

    assert authenticate(teams, "a-token-from-a-mounted-secret").name == "a"
    assert authenticate(teams, "a-token-from-a-mounted-secreT") is None


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


SHOT_BYTES = 300_000  # the most a screenshot of docs/web.md may weigh


def _until(page, expression: str, timeout: float) -> None:
    """Wait until ``expression`` is true in the page. Polled from here: Playwright's
    wait_for_function evaluates its predicate with eval, which the pages' strict
    Content-Security-Policy (no 'unsafe-eval') refuses, as it should."""
    import time

    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {expression}"
        page.wait_for_timeout(200)


def _loaded(page, selector: str) -> list[int]:
    """naturalWidth of every image matched, once each has finished loading (or failed)."""
    _until(page, f"[...document.querySelectorAll({selector!r})].every(i => i.complete)", 30)
    return page.eval_on_selector_all(selector, "els => els.map(e => e.naturalWidth)")


def _all_loaded(page, selector: str) -> int:
    """How many images match, each loaded with a width (a broken image has none)."""
    widths = _loaded(page, selector)
    assert all(w > 0 for w in widths), widths
    return len(widths)


def _shot(page, name: str) -> None:
    """A screenshot for docs/web.md (STYLEBATCH_SCREENSHOTS=docs saves them): a PNG under
    SHOT_BYTES, reduced to 256 colours (dithered) where it would be larger."""
    from tests.conftest import ROOT

    shots = os.environ.get("STYLEBATCH_SCREENSHOTS")
    if not shots:
        return
    data = page.screenshot()
    if len(data) > SHOT_BYTES:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        image = image.quantize(palette=image.quantize(256), dither=Image.Dither.FLOYDSTEINBERG)
        buf = io.BytesIO()
        image.save(buf, "PNG", optimize=True)
        data = buf.getvalue()
    assert len(data) <= SHOT_BYTES, (name, len(data))
    (ROOT / shots / f"web-{name}.png").write_bytes(data)


def _browser_log_in(browser, served, team: str, height: int = 760):
    page = browser.new_page(viewport={"width": 1000, "height": height}, accept_downloads=True)
    answer = page.goto(f"{served.url}/ui")
    assert answer.status == 401 and page.locator("input[name=token]").count() == 1
    page.fill("input[name=token]", TOKENS[team])
    page.click("button[type=submit]")
    page.wait_for_url(f"{served.url}/ui")
    return page


def _browser_or_skip():
    import shutil

    chromium = shutil.which("chromium")
    if chromium is None:
        print("SKIPPED: chromium is not installed (Debian: apt-get install chromium)")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    return chromium, sync_api


def test_the_pages_in_a_real_browser(served, client):
    """Debian's chromium, driven by Playwright: log in, submit a manifest, watch the job reach
    done, every gallery thumbnail loaded, a render's page, the contact sheet; cancel a second
    job; the other team's session gets 404 for these jobs. STYLEBATCH_SCREENSHOTS=docs saves
    the screenshots of docs/web.md."""
    chromium, sync_api = _browser_or_skip()
    shot = _shot

    def log_in(browser, team: str):
        return _browser_log_in(browser, served, team)

    def submit(page, data: dict) -> str:
        page.fill("textarea[name=manifest]", yaml.safe_dump(data, sort_keys=False))
        page.click("#send")
        page.wait_for_url("**/ui/jobs/*")
        return page.url.rsplit("/", 1)[-1]

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        alpha = log_in(browser, "alpha")
        styles = ("starry_night", "wave", "shipwreck")
        job = submit(alpha, document("web-browser", styles=styles, sizes=[40, 48]))
        _until(alpha, "document.querySelector('#job [data-field=status]')?.textContent", 5)
        _until(
            alpha, "document.querySelector('#job [data-field=status]')?.textContent === 'done'", 240
        )
        alpha.wait_for_load_state("load")
        assert alpha.locator("#job [data-field=done]").inner_text() == "6"
        shot(alpha, "job")

        alpha.click("text=gallery")
        alpha.wait_for_url("**/gallery")
        assert _all_loaded(alpha, "#gallery img") == 6
        shot(alpha, "gallery")
        alpha.select_option("select[name=style]", "wave")
        alpha.click("#filters button")
        alpha.wait_for_url("**/gallery?*style=wave*")
        assert _all_loaded(alpha, "#gallery img") == 2

        alpha.click("#gallery li a >> nth=0")
        alpha.wait_for_url("**/renders/*")
        assert _all_loaded(alpha, "#output") == 1
        assert alpha.locator("#credentials").inner_text().startswith("no")
        assert "pyramid" in alpha.content()
        shot(alpha, "render")

        alpha.goto(f"{served.url}/ui/jobs/{job}/contact-sheet")
        assert _all_loaded(alpha, "#sheet") == 1
        shot(alpha, "contact-sheet")

        alpha.goto(f"{served.url}/ui")
        second = submit(alpha, document("web-browser-cancel", styles=styles, sizes=[40, 48, 56]))
        alpha.click("#cancel")
        alpha.wait_for_url(f"**/ui/jobs/{second}")
        record = client.get(f"/jobs/{second}", headers=bearer("alpha")).json()
        assert record["cancel_requested"] is True
        assert alpha.locator(".tag", has_text="cancel requested").count() == 1
        assert alpha.locator("#notice").inner_text().startswith("cancel requested")
        alpha.goto(f"{served.url}/ui")
        assert alpha.locator(f"#jobs tr[data-job='{job}']").count() == 1
        shot(alpha, "jobs")

        beta = log_in(browser, "beta")
        for path in (f"/ui/jobs/{job}", f"/ui/jobs/{second}/gallery"):
            assert beta.goto(f"{served.url}{path}").status == 404
        beta.goto(f"{served.url}/ui")
        assert beta.locator("#jobs").count() == 1
        assert beta.locator(f"#jobs tr[data-job='{job}']").count() == 0
        browser.close()
    wait_ended(client, second)


def test_a_review_session_in_a_real_browser(fleet, served, client, s3_server, tmp_path):
    """The campaign team's morning (docs/web.md, Review): in chromium, approve three renders
    with the keyboard and reject one with a note; re-render the rejected one with more style;
    approve its new version (superseding the old); export the approved set: exactly the four
    approved outputs, byte for byte with S3, and a CSV that agrees. Two tabs decide on the
    same render: the later one is told, nothing is lost. The summary on S3 gets the review."""
    import csv
    import zipfile

    chromium, sync_api = _browser_or_skip()
    first = post(client, "alpha", document("web-review", sizes=[40, 48]))
    job = first.json()["job"]
    assert wait_ended(client, job)["done"] == 4
    renders = client.get(f"/v1/jobs/{job}/renders", headers=bearer("alpha")).json()["renders"]
    s3 = s3_server.client()

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        alpha = _browser_log_in(browser, served, "alpha", height=900)
        alpha.goto(f"{served.url}/ui/jobs/{job}/gallery")
        assert _all_loaded(alpha, "#gallery img") == 4
        alpha.click("#gallery li a >> nth=0")
        alpha.wait_for_url("**/renders/*")
        assert _all_loaded(alpha, "#content-photo") == 1 and _all_loaded(alpha, "#output") == 1
        _shot(alpha, "review")
        for _ in range(3):  # a approves, and moves on to the next render
            before = alpha.url
            alpha.keyboard.press("a")
            alpha.wait_for_url(lambda url, before=before: url != before)
            assert "1 render(s) approved" in alpha.locator("#notice").inner_text()
        rejected = alpha.url.split("/renders/", 1)[1].split("?")[0]
        alpha.keyboard.press("n")
        alpha.keyboard.type("too busy: more of the painting")
        alpha.click("#reject")
        alpha.wait_for_url(f"**/renders/{rejected}*")
        assert alpha.locator("#decision .badge-rejected").count() == 1
        assert alpha.locator("#review-note").inner_text() == "too busy: more of the painting"

        detail = client.get(f"/v1/jobs/{job}/renders/{rejected}", headers=bearer("alpha")).json()
        more = detail["params"]["style_weight"] * 4
        assert alpha.locator("#rerender-box[open]").count() == 1  # open for a rejected render
        alpha.fill("#rerender input[name=style_weight]", str(more))
        _shot(alpha, "rerender")
        alpha.click("#rerender-send")
        alpha.wait_for_url("**/ui/jobs/*")
        child = alpha.url.rsplit("/", 1)[-1]
        assert (
            child != job
            and "re-render submitted: 1 render(s)" in alpha.locator("#notice").inner_text()
        )
        assert wait_ended(client, child)["done"] == 1
        alpha.goto(f"{served.url}/ui/jobs/{child}/gallery")
        alpha.click("#gallery li a >> nth=0")
        alpha.wait_for_url("**/renders/*")
        assert alpha.locator("#parent").count() == 1
        alpha.click("#approve")
        alpha.wait_for_url("**/renders/*")
        assert "1 earlier version(s) superseded" in alpha.locator("#notice").inner_text()

        alpha.goto(f"{served.url}/ui/jobs/{job}/renders/{rejected}")
        assert alpha.locator("#decision .badge-superseded").count() == 1
        assert alpha.locator("#versions .version").count() == 1
        alpha.goto(f"{served.url}/ui/jobs/{job}/gallery")
        assert alpha.locator(".badge-approved").count() == 3
        assert alpha.locator(".badge-superseded").count() == 1
        _shot(alpha, "gallery-review")
        with alpha.expect_download() as download:
            alpha.click("#export")
        saved = tmp_path / "approved.zip"
        download.value.save_as(saved)

        # two tabs on one render: the second is told, not overwritten
        first_render = sorted(r["render"] for r in renders if r["render"] != rejected)[0]
        tabs = [_browser_log_in(browser, served, "alpha") for _ in range(2)]
        for tab in tabs:
            tab.goto(f"{served.url}/ui/jobs/{job}/renders/{first_render}")
        tabs[0].fill("#note", "keep: the hero shot")
        tabs[0].click("#approve")
        tabs[0].wait_for_load_state("load")
        tabs[1].fill("#note", "drop it")
        tabs[1].click("#reject")
        tabs[1].wait_for_url(f"**/renders/{first_render}*")
        told = tabs[1].locator("#notice")
        assert told.get_attribute("class") == "notice refused"
        assert "not recorded: decided meanwhile: approved by alpha" in told.inner_text()
        assert tabs[1].locator("#review-note").inner_text() == "keep: the hero shot"
        alpha.goto(f"{served.url}/ui/jobs/{job}/compare?content=tubingen")
        assert _all_loaded(alpha, "#compare img") == 4
        _shot(alpha, "compare")
        browser.close()

    archive = zipfile.ZipFile(saved)
    outputs = [n for n in archive.namelist() if n.endswith(".png")]
    assert len(outputs) == 4 and set(archive.namelist()) == {*outputs, "renders.csv"}
    rows = list(csv.DictReader(io.StringIO(archive.read("renders.csv").decode())))
    assert sorted(r["key"] for r in rows) == sorted(outputs)
    assert {r["decision"] for r in rows} == {"approved"}
    assert sum(r["job"] == child for r in rows) == 1 and rejected not in {r["render"] for r in rows}
    prefix = "alpha/web-review/"
    for row in rows:
        held = s3.get_object(Bucket="outputs", Key=prefix + row["key"])["Body"].read()
        assert archive.read(row["key"]) == held, row["key"]
        assert float(row["cost_device_seconds"]) > 0 and row["device"] == "cpu"
    summary_key = f"{prefix}_jobs/{job}/summary.json"

    def reviewed() -> bool:
        data = json.loads(s3.get_object(Bucket="outputs", Key=summary_key)["Body"].read())
        return data["review"] == {"approved": 3, "rejected": 0, "superseded": 1, "undecided": 0}

    wait_for(reviewed, 60, "the summary's review section")
    cost = s3.get_object(Bucket="outputs", Key=f"{prefix}_jobs/{job}/cost.csv")["Body"].read()
    decided = {r["render"]: r["decision"] for r in csv.DictReader(io.StringIO(cost.decode()))}
    assert decided[rejected] == "superseded" and list(decided.values()).count("approved") == 3


# The review's faults (issue 21): a server over local folders and a Redis of its own, no
# workers (nothing here needs a render to run).


@pytest.fixture(scope="module")
def local_redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis-local"))
    yield server
    server.stop()


@pytest.fixture
def local(local_redis, tmp_path, images):
    """(settings, a TestClient of its app, the app, the inputs folder) over local folders."""
    import hashlib
    import shutil

    from fastapi.testclient import TestClient

    inputs, outputs = tmp_path / "inputs", tmp_path / "outputs"
    inputs.mkdir()
    for name in ("tubingen", "starry_night", "wave"):
        shutil.copy(images[name], inputs / f"{name}.png")
    teams = {
        name: {
            "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
            "allowed_inputs": [str(inputs)],
            "allowed_outputs": [str(outputs / name)],
        }
        for name, token in TOKENS.items()
    }
    settings = dataclasses.replace(
        Settings(),
        redis_url=local_redis.url(1),
        allowed_inputs=(str(inputs),),
        allowed_outputs=(str(outputs),),
        cache_dir=tmp_path / "cache",
        weights="random",
        web_teams=json.dumps(teams),
        web_thumbnails=str(tmp_path / "thumbnails"),
        **GENEROUS,
    )
    app = create_app(settings)
    app.state.web.store.r.flushdb()
    with TestClient(app, raise_server_exceptions=False) as web:
        yield settings, web, app, inputs


def local_doc(inputs, name: str, team: str = "alpha", contents=("tubingen",), sizes=(40,)):
    return {
        "name": name,
        "output": {"location": str(inputs.parent / "outputs" / team / name)},
        "content": [str(inputs / f"{c}.png") for c in contents],
        "styles": [
            {"name": s, "image": str(inputs / f"{s}.png")} for s in ("starry_night", "wave")
        ],
        "params": {"preset": "draft", "sizes": list(sizes)},
    }


def local_post(web, data, team: str = "alpha", kind: str = "application/json"):
    body = json.dumps(data) if "json" in kind else yaml.safe_dump(data)
    return web.post("/jobs", content=body, headers={**bearer(team), "Content-Type": kind})


def test_a_path_that_is_no_job_id_is_404_before_redis_is_read(local):
    _settings, web, app, inputs = local
    job = local_post(web, local_doc(inputs, "ids")).json()["job"]
    store = app.state.web.store
    for suffix in (":index", ":specs", ":states", ":ended", ":failed", ":x"):
        for path in (f"/jobs/{job}{suffix}", f"/jobs/{job}{suffix}/renders"):
            answer = web.get(path, headers=bearer("alpha"))
            assert answer.status_code == 404, (path, answer.text)
        page = web.get(f"/ui/jobs/{job}{suffix}", headers=bearer("alpha"))
        assert page.status_code == 404, suffix
    for key in (f"{job}:index", f"{job}:specs", f"{job}:ended"):  # a zset, a hash of specs
        assert store.get(key) is None, key
    assert web.get(f"/jobs/{job}", headers=bearer("alpha")).status_code == 200


def test_nesting_too_deep_is_a_422_not_a_crash(local):
    _settings, web, _app, _inputs = local
    deep = "[" * 20000 + "]" * 20000
    for kind, body in (
        ("application/json", deep),
        ("application/yaml", deep),
        ("application/yaml", "a: " + deep),
    ):
        answer = web.post("/jobs", content=body, headers={**bearer("alpha"), "Content-Type": kind})
        assert answer.status_code == 422, (kind, answer.text[:200])
        assert "nested too deeply" in answer.text
    form = web.post("/ui/jobs", data={"manifest": deep}, headers=bearer("alpha"))
    assert form.status_code == 422 and "nested too deeply" in form.text


def test_the_same_manifest_posted_at_once_is_one_job_enqueued_once(local, monkeypatch):
    """Four posts of a 1,500-render manifest at once: one 201, three 200 with the same job,
    no 5xx, every render enqueued once (not again by a post that found the job not yet
    marked sent while the first was still enqueueing it)."""
    import threading

    import common.dispatch
    import scheduler.submit

    _settings, _web, app, inputs = local
    for i in range(150):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(inputs / f"c{i:03}.png")
    data = local_doc(inputs, "racing", contents=[f"c{i:03}" for i in range(150)])
    data["params"]["sizes"] = [32, 40, 48, 56, 64]
    sent, real_enqueue, real_redrive = [], scheduler.submit.enqueue, common.dispatch.redrive

    def enqueue(app_, job, renders, *args):
        sent.extend(r.id for r in renders)
        return real_enqueue(app_, job, renders, *args)

    def redrive(job, ids, *args):
        sent.extend(ids)
        return real_redrive(job, ids, *args)

    monkeypatch.setattr(scheduler.submit, "enqueue", enqueue)
    monkeypatch.setattr(common.dispatch, "redrive", redrive)
    server = Served(app)
    answers = []
    barrier = threading.Barrier(4)

    def post_one() -> None:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            barrier.wait()
            r = c.post(
                "/jobs",
                content=json.dumps(data),
                headers={**bearer("alpha"), "Content-Type": "application/json"},
            )
            answers.append((r.status_code, r.json().get("job"), r.text[:200]))

    try:
        threads = [threading.Thread(target=post_one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        server.stop()
    assert sorted(a[0] for a in answers) == [200, 200, 200, 201], answers
    assert len({a[1] for a in answers}) == 1
    assert len(sent) == 1500 and len(set(sent)) == 1500  # each render sent once
    store = app.state.web.store
    assert store.get(answers[0][1]).meta["sent"] == "1"
    assert not list(store.r.scan_iter("sb:job:*staging*"))  # no attempt's staging left


def test_the_team_list_pages_past_an_expired_job(local):
    _settings, web, app, inputs = local
    ids = [local_post(web, local_doc(inputs, f"page{i}")).json()["job"] for i in range(4)]
    store = app.state.web.store
    store.r.delete(store.keys(ids[2]).record)  # its record expired; the team's index not yet swept
    first = web.get("/v1/jobs?limit=2", headers=bearer("alpha"))
    assert [j["job"] for j in first.json()["jobs"]] == [ids[3], ids[1]], first.text
    assert first.headers["link"].startswith("</v1/jobs?") and 'rel="next"' in first.headers["link"]
    rest = web.get(first.headers["link"][1:].split(">")[0], headers=bearer("alpha")).json()
    assert [j["job"] for j in rest["jobs"]] == [ids[0]] and rest["next"] is None


def test_json_bodies_are_read_as_json(local):
    _settings, web, _app, inputs = local
    data = local_doc(inputs, "tabs")
    tabbed = json.dumps(data, indent="\t")
    for kind in ("application/json", "text/plain"):  # and by its opening "{"
        headers = {**bearer("alpha"), "Content-Type": kind}
        answer = web.post("/jobs", content=tabbed, headers=headers)
        assert answer.status_code in (200, 201), (kind, answer.text)
    exponent = json.dumps(local_doc(inputs, "expo")).replace("[40]", "[4e1]")
    answer = web.post(
        "/jobs", content=exponent, headers={**bearer("alpha"), "Content-Type": "application/json"}
    )
    assert answer.status_code == 201, answer.text  # 4e1 is the number 40, not a string
    flow = "{name: flow}"  # a YAML flow mapping that is no JSON: still read, as YAML
    answer = web.post("/jobs", content=flow, headers={**bearer("alpha")})
    assert answer.status_code == 422 and "output" in answer.text and "YAML" not in answer.text


def test_resubmitting_a_job_the_team_sees_is_200_and_one_it_cannot_409(local, monkeypatch):
    from common.expand import plan_document
    from scheduler import submit as submitting

    settings, web, app, inputs = local
    ctx = app.state.web
    data = local_doc(inputs, "from-cli")
    plan = plan_document(data, "cli", inputs, settings)
    submitting.submit(plan, settings, ctx.celery, ctx.store)  # the command line: no team
    assert web.get(f"/jobs/{plan.job_id}", headers=bearer("alpha")).status_code == 200
    again = local_post(web, data)
    assert again.status_code == 200 and again.json()["job"] == plan.job_id, again.text
    # beta wins the race for a manifest between alpha's check and alpha's submit
    raced = local_doc(inputs, "raced")
    real = submitting.submit

    def beta_first(plan, *args, **kw):
        real(plan, *args, **{**kw, "team": "beta"})
        return real(plan, *args, **kw)

    monkeypatch.setattr(submitting, "submit", beta_first)
    answer = local_post(web, raced)
    assert answer.status_code == 409, answer.text


def test_an_oversized_form_is_413_on_every_route(local):
    _settings, web, _app, _inputs = local

    def chunks():
        for _ in range(40):
            yield b"a" * 65536

    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for path in ("/ui/login", "/ui/jobs", "/jobs"):
        answer = web.post(path, content=chunks(), headers={**form, **bearer("alpha")})
        assert answer.status_code == 413, (path, answer.status_code, answer.text[:200])


def test_no_swagger_page_and_the_pages_link_the_openapi_document(local):
    _settings, web, _app, _inputs = local
    assert web.get("/docs").status_code == 404
    page = web.get("/ui", headers=bearer("alpha")).text
    assert 'href="/openapi.json"' in page and 'href="/docs"' not in page
    assert web.get("/openapi.json").json()["info"]["title"] == "stylebatch"


def test_the_thumbnail_cache_is_pruned_least_recently_used_first(local, tmp_path):
    import time

    from common.uris import Location
    from scheduler.web.outputs import Outputs

    settings, _web, _app, _inputs = local
    folder = tmp_path / "outs"
    folder.mkdir()
    for i in range(12):
        noisy = Image.effect_noise((400, 400), 80 + i).convert("RGB")
        noisy.save(folder / f"o{i}.png")
    outputs = Outputs(settings, tmp_path / "thumbs")
    where = Location("file", str(folder), "")
    first, _ = outputs.thumbnail(where, "o0.png")
    cap = 4 * (first.stat().st_size + first.with_suffix(".json").stat().st_size)
    outputs.cap = cap  # room for 4 (STYLEBATCH_WEB_THUMBNAIL_CACHE_BYTES)
    for i in range(1, 12):
        time.sleep(0.01)
        outputs.thumbnail(where, "o0.png")  # in use: kept
        outputs.thumbnail(where, f"o{i}.png")
    held = sum(p.stat().st_size for p in (tmp_path / "thumbs").rglob("*") if p.is_file())
    assert held <= cap, (held, cap)
    assert first.exists()  # the most recently used survives the pruning
    assert len(list((tmp_path / "thumbs").rglob("*.jpg"))) < 12
    assert not list((tmp_path / "thumbs").rglob(".*"))  # no temporary file left


def test_images_revalidate_with_a_quoted_etag(local):
    import threading

    from common.uris import Location

    _settings, web, app, inputs = local
    job = local_post(web, local_doc(inputs, "etags")).json()["job"]
    store = app.state.web.store
    render, _ = store.renders_page(job).renders[0]
    info = store.get(job)
    out = info.location.root
    target = os.path.join(out, render.key)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    Image.new("RGB", (300, 200), (200, 10, 10)).save(target)
    base = f"/jobs/{job}/renders/{render.id}"
    for route in ("/thumbnail", "/image"):
        got = web.get(base + route, headers=bearer("alpha"))
        assert got.status_code == 200, got.text
        etag = got.headers["etag"]
        assert etag.startswith('"') and etag.endswith('"'), etag
        assert got.headers["cache-control"] == "private, no-cache"
        same = web.get(base + route, headers={**bearer("alpha"), "If-None-Match": etag})
        assert same.status_code == 304 and same.content == b""
    old = web.get(base + "/thumbnail", headers=bearer("alpha")).headers["etag"]
    Image.new("RGB", (300, 200), (10, 200, 10)).save(target)  # rendered again, same URL
    fresh = web.get(base + "/thumbnail", headers={**bearer("alpha"), "If-None-Match": old})
    assert fresh.status_code == 200 and fresh.headers["etag"] != old
    # threads making the same new thumbnail at once: each writes a temporary file of its own
    Image.new("RGB", (320, 200), (10, 10, 200)).save(target)
    errors = []

    def make() -> None:
        try:
            app.state.web.outputs.thumbnail(Location("file", out, ""), render.key)
        except Exception as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_the_session_cookie_is_secure_as_set_or_off_loopback(local):
    from fastapi.testclient import TestClient

    from scheduler.web.app import secure_cookies

    settings, web, _app, _inputs = local
    assert secure_cookies(settings, "0.0.0.0") and not secure_cookies(settings, "127.0.0.1")
    assert not secure_cookies(settings, None)
    assert not secure_cookies(dataclasses.replace(settings, web_secure_cookies="false"), "::")
    on = dataclasses.replace(settings, web_secure_cookies="true")
    assert secure_cookies(on, "127.0.0.1")
    with TestClient(create_app(on), raise_server_exceptions=False) as behind_tls:
        login = log_in(behind_tls, "alpha")
    assert login.status_code == 303 and "secure" in login.headers["set-cookie"].lower()
    plain = log_in(web, "alpha")
    assert "secure" not in plain.headers["set-cookie"].lower()
    web.cookies.clear()


def test_errors_name_their_cause_and_pages_are_not_stored(local, monkeypatch, tmp_path):
    import redis as redis_lib

    from scheduler.beat import ManifestSource

    settings, web, app, _inputs = local
    answer = web.get("/jobs")
    assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
    page = web.get("/ui", headers=bearer("alpha"))
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    assert web.get("/ui/login").headers["cache-control"] == "no-store"

    def oom(*args, **kw):
        raise redis_lib.ResponseError("OOM command not allowed when used memory > 'maxmemory'")

    monkeypatch.setattr(app.state.web.store, "jobs_after", oom)
    full = web.get("/jobs", headers=bearer("alpha"))
    assert full.status_code == 503 and full.json()["service"] == "Redis", full.text
    monkeypatch.undo()

    def unreadable(self):
        raise PermissionError(13, "Permission denied", self.uri)

    monkeypatch.setattr(ManifestSource, "scan", unreadable)
    app.state.web.settings = dataclasses.replace(settings, schedules=str(tmp_path / "sched"))
    listed = web.get("/schedules", headers=bearer("alpha"))
    assert listed.status_code == 503 and "S3" not in listed.text, listed.text
    assert "schedules folder" in listed.json()["detail"]
    assert str(tmp_path) not in listed.text  # no server path is shown to a team
