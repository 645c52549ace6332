"""The web front (scheduler/web) over local folders and a real Redis, with no workers: job ids
checked before Redis is read, bodies too deep or too big, concurrent posts of one manifest, the
team's job list, JSON bodies, resubmits, the thumbnail cache, ETags, cookies, and errors that
name their cause. Against a rendering fleet: tests/fleet/test_web_api.py."""

from __future__ import annotations

import dataclasses
import json
import os

import httpx
from PIL import Image

from scheduler.web.app import create_app
from tests.support.web import Served, bearer, local_doc, local_post, log_in

# The review's faults (issue 21): a server over local folders and a Redis database of its own,
# no workers (nothing here needs a render to run).


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
