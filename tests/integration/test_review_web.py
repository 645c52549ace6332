"""The review workflow through the web front (scheduler/web/routes/reviews.py, review_pages.py)
over local folders and a Redis of its own: renders are ended by hand (their outputs written
as a worker would), so decisions, the export, re-renders, search and the pages are checked
without a render running. The same flow against a real fleet, in a real browser, is in
tests/test_web.py."""

from __future__ import annotations

import csv
import dataclasses
import io
import re
import threading
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from PIL import Image

from common.state import Held
from common.state.reads import Reads
from scheduler import review
from scheduler.web.app import create_app
from tests.support.services import wait_for
from tests.support.web import Served, bearer, local_doc, local_post, log_in, session_csrf

ALPHA = bearer("alpha")


def rendered(app, job: str, fail: tuple[str, ...] = ()) -> dict[str, bytes]:
    """End every render of ``job`` as a worker would (its output written, then done; those
    in ``fail`` failed), then end the job. Returns key -> the output's bytes."""
    store = app.state.web.store
    info = store.get(job)
    written = {}
    for i, render in enumerate(sorted(store.specs(job), key=lambda r: r.id)):
        claim = store.claim(job, render.id, "W", 60, 3)
        held = Held(job, render.id, claim.attempt)
        if render.id in fail:
            store.finish(held, "failed", error="out of memory")
            continue
        buf = io.BytesIO()
        Image.new("RGB", (40, 30), (40 * i % 256, 90, 160)).save(buf, "PNG")
        path = Path(info.location.root, render.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.getvalue())
        written[render.key] = buf.getvalue()
        store.finish(held, "done", seconds=2.5, device="cpu")
    assert store.begin_finalize(job, "t", 60) == "ok" and store.end_job(job, "done", token="t")
    return written


def renders_of(web, job: str, team: str = "alpha", **query) -> list[dict]:
    answer = web.get(f"/v1/jobs/{job}/renders", params=query, headers=bearer(team))
    assert answer.status_code == 200, answer.text
    return answer.json()["renders"]


def decide(web, job: str, render: str, decision: str, version: int, note: str = "", team="alpha"):
    body = {"decision": decision, "version": version, "note": note}
    return web.put(f"/v1/jobs/{job}/renders/{render}/review", json=body, headers=bearer(team))


@pytest.fixture
def job(local):
    _settings, web, app, inputs = local
    data = local_doc(inputs, "review", sizes=(40, 48))
    made = local_post(web, data).json()["job"]
    written = rendered(app, made)
    return web, app, made, written


def test_a_decision_needs_the_version_seen_and_a_stale_one_is_refused(job):
    web, _app, job_id, _ = job
    first = renders_of(web, job_id)[0]
    assert first["review"] is None and first["review_version"] == 0
    ok = decide(web, job_id, first["render"], "approved", 0, "lovely")
    assert ok.status_code == 200, ok.text
    assert ok.json()["review"] | {"at": 0} == {
        "decision": "approved", "note": "lovely", "by": "alpha", "at": 0, "version": 1,
        "superseded_by": None, "was": None,
    }  # fmt: skip
    stale = decide(web, job_id, first["render"], "rejected", 0, "too dark")
    assert stale.status_code == 409 and stale.json()["code"] == "stale"
    assert stale.json()["current"]["decision"] == "approved" and stale.json()["version"] == 1
    assert "decided meanwhile: approved by alpha" in stale.json()["detail"]
    again = decide(web, job_id, first["render"], "rejected", 1, "too dark")
    assert again.status_code == 200 and again.json()["review"]["version"] == 2
    record = web.get(f"/v1/jobs/{job_id}", headers=ALPHA).json()
    assert record["review"] == {"approved": 0, "rejected": 1, "superseded": 0, "undecided": 3}


def test_another_teams_missing_failed_and_expired_renders_get_clear_4xx(local):
    _settings, web, app, inputs = local
    job_id = local_post(web, local_doc(inputs, "faults", sizes=(40,))).json()["job"]
    ids = sorted(r.id for r in app.state.web.store.specs(job_id))
    rendered(app, job_id, fail=(ids[0],))
    theirs = decide(web, job_id, ids[1], "approved", 0, team="beta")
    assert theirs.status_code == 404 and "no such job" in theirs.json()["detail"]
    missing = decide(web, job_id, "0" * 24, "approved", 0)
    assert missing.status_code == 404 and "has no render" in missing.json()["detail"]
    failed = decide(web, job_id, ids[0], "approved", 0)
    assert failed.status_code == 409 and failed.json()["code"] == "no-output"
    bad = web.put(
        f"/v1/jobs/{job_id}/renders/{ids[1]}/review",
        json={"decision": "maybe", "version": -1},
        headers=ALPHA,
    )
    assert bad.status_code == 422
    assert {p["where"] for p in bad.json()["problems"]} == {"body.decision", "body.version"}
    app.state.web.store.delete(job_id)  # expired
    gone = decide(web, job_id, ids[1], "approved", 0)
    assert gone.status_code == 404


def test_bulk_decisions_by_selection_and_filter_report_what_someone_else_changed(job):
    web, _app, job_id, _ = job
    renders = renders_of(web, job_id)
    picked = [{"render": r["render"], "version": 0} for r in renders[:2]]
    decide(web, job_id, renders[1]["render"], "rejected", 0, "meanwhile")  # another tab
    made = web.post(
        f"/v1/jobs/{job_id}/reviews",
        json={"decision": "approved", "renders": picked},
        headers=ALPHA,
    ).json()
    assert made["recorded"] == 1 and [s["render"] for s in made["stale"]] == [renders[1]["render"]]
    assert "1 not recorded: decided meanwhile" in made["detail"]
    rest = web.post(
        f"/v1/jobs/{job_id}/reviews",
        json={"decision": "approved", "filter": {"decision": "undecided"}},
        headers=ALPHA,
    ).json()
    assert rest["recorded"] == 2 and rest["reviewed"] is True
    assert {r["review"]["decision"] for r in renders_of(web, job_id)} == {"approved", "rejected"}
    both = web.post(
        f"/v1/jobs/{job_id}/reviews",
        json={"decision": "approved", "renders": picked, "filter": {}},
        headers=ALPHA,
    )
    assert both.status_code == 422


def test_the_export_is_the_approved_outputs_byte_for_byte_with_a_csv(job):
    web, _app, job_id, written = job
    renders = renders_of(web, job_id)
    for r in renders[:3]:
        assert decide(web, job_id, r["render"], "approved", 0).status_code == 200
    decide(web, job_id, renders[3]["render"], "rejected", 0, "no")
    answer = web.get(f"/v1/jobs/{job_id}/export", headers=ALPHA)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/zip"
    assert f'filename="{job_id}-approved.zip"' in answer.headers["content-disposition"]
    archive = zipfile.ZipFile(io.BytesIO(answer.content))
    assert archive.testzip() is None
    names = [n for n in archive.namelist() if n != "renders.csv"]
    keys = {r["render"]: r["output"].split(f"/{job_id.rsplit('-', 1)[0]}/", 1)[-1] for r in renders}
    assert sorted(names) == sorted(keys[r["render"]] for r in renders[:3])
    for name in names:
        assert archive.read(name) == written[name]
    rows = list(csv.DictReader(io.StringIO(archive.read("renders.csv").decode())))
    assert sorted(r["key"] for r in rows) == sorted(names)
    assert {r["decision"] for r in rows} == {"approved"} and {r["reviewer"] for r in rows} == {
        "alpha"
    }
    assert {r["cost_device_seconds"] for r in rows} == {"2.500"}
    by_render = {r["render"]: r for r in renders}
    for row in rows:
        source = by_render[row["render"]]
        assert (row["content"], row["style"], row["size"]) == (
            source["content"], source["style"], source["size"],
        )  # fmt: skip
    rejected = zipfile.ZipFile(
        io.BytesIO(web.get(f"/v1/jobs/{job_id}/export?decision=rejected", headers=ALPHA).content)
    )
    assert len(rejected.namelist()) == 2  # the one output and its CSV
    assert web.get(f"/v1/jobs/{job_id}/export", headers=bearer("beta")).status_code == 404
    assert web.get(f"/v1/jobs/{job_id}/export?decision=maybe", headers=ALPHA).status_code == 422


def test_an_output_gone_from_storage_is_listed_apart_not_a_broken_zip(job):
    web, app, job_id, written = job
    renders = renders_of(web, job_id)
    for r in renders:
        decide(web, job_id, r["render"], "approved", 0)
    info = app.state.web.store.get(job_id)
    gone = sorted(written)[0]
    Path(info.location.root, gone).unlink()
    archive = zipfile.ZipFile(
        io.BytesIO(web.get(f"/v1/jobs/{job_id}/export", headers=ALPHA).content)
    )
    assert gone not in archive.namelist() and len(archive.namelist()) == 3 + 2
    assert gone in archive.read("not-exported.csv").decode()


def test_a_re_render_is_a_new_job_with_its_parent_and_the_same_ask_is_the_same_job(job):
    web, _app, job_id, _ = job
    target = renders_of(web, job_id)[0]
    bad = web.post(
        f"/v1/jobs/{job_id}/rerender",
        json={"renders": [target["render"]], "overrides": {"style_weight": -2, "seed": "x",
                                                          "preset": "max", "tint": 1}},
        headers=ALPHA,
    )  # fmt: skip
    assert bad.status_code == 422
    assert {p["where"] for p in bad.json()["problems"]} == {
        "overrides.style_weight", "overrides.seed", "overrides.preset", "overrides.tint",
    }  # fmt: skip
    nothing = web.post(
        f"/v1/jobs/{job_id}/rerender", json={"renders": [target["render"]]}, headers=ALPHA
    )
    assert nothing.status_code == 422 and nothing.json()["problems"][0]["where"] == "overrides"
    same = web.post(
        f"/v1/jobs/{job_id}/rerender",
        json={"renders": [target["render"]], "overrides": {"seed": 0}},  # as it was made
        headers=ALPHA,
    )
    assert same.status_code == 422 and "changes nothing" in same.json()["detail"]
    ask = {"renders": [target["render"]], "overrides": {"style_weight": 8, "seed": 3}}
    made = web.post(f"/v1/jobs/{job_id}/rerender", json=ask, headers=ALPHA)
    assert made.status_code == 201, made.text
    child = made.json()
    assert child["parent"] == job_id and child["total"] == 1
    assert "/rerenders/" in child["output"]
    again = web.post(f"/v1/jobs/{job_id}/rerender", json=ask, headers=ALPHA)
    assert again.status_code == 200 and again.json()["job"] == child["job"]
    [version] = web.get(f"/v1/jobs/{job_id}/renders/{target['render']}", headers=ALPHA).json()[
        "versions"
    ]
    assert version["job"] == child["job"]
    new = renders_of(web, child["job"])[0]
    detail = web.get(f"/v1/jobs/{child['job']}/renders/{new['render']}", headers=ALPHA).json()
    assert detail["parent"]["render"] == target["render"]
    assert detail["params"]["style_weight"] == 8 and detail["params"]["seed"] == 3
    theirs = web.post(f"/v1/jobs/{job_id}/rerender", json=ask, headers=bearer("beta"))
    assert theirs.status_code == 404


def test_a_re_render_cannot_reach_outside_the_teams_prefixes(local, tmp_path):
    """Overrides go through the same confinement as any manifest: a job recorded from the
    command line under alpha's outputs but reading an input alpha may not read cannot be
    re-rendered by alpha, and the refusal does not name the input."""
    from common.expand import plan_job
    from tests.support.manifests import write_manifest

    settings, web, app, inputs = local
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.png").write_bytes((inputs / "tubingen.png").read_bytes())
    data = local_doc(inputs, "cli-job")
    data["content"] = [str(outside / "secret.png")]
    fleet = dataclasses.replace(settings, allowed_inputs=(str(inputs), str(outside)))
    plan = plan_job(write_manifest(tmp_path, data), fleet, "random")
    assert app.state.web.store.create(plan)  # as `stylebatch submit` records it
    rendered(app, plan.job_id)
    rid = plan.renders[0].id
    answer = web.post(
        f"/v1/jobs/{plan.job_id}/rerender",
        json={"renders": [rid], "overrides": {"seed": 9}},
        headers=ALPHA,
    )
    assert answer.status_code == 422, answer.text
    assert "secret" not in answer.text and str(outside) not in answer.text
    photo = web.get(f"/v1/jobs/{plan.job_id}/renders/{rid}/content", headers=ALPHA)
    assert photo.status_code == 404 and "secret" not in photo.text


def test_export_and_re_render_take_the_teams_submit_rate(local):
    from fastapi.testclient import TestClient

    settings, web, _app, inputs = local
    job_id = local_post(web, local_doc(inputs, "rated")).json()["job"]
    tight = dataclasses.replace(settings, web_submit_burst=2, web_submits_per_minute=1)
    with TestClient(create_app(tight), raise_server_exceptions=False) as limited:
        codes = [
            limited.get(f"/v1/jobs/{job_id}/export", headers=ALPHA).status_code for _ in range(3)
        ]
        assert codes[-1] == 429, codes
        rerender = limited.post(
            f"/v1/jobs/{job_id}/rerender", json={"renders": [], "overrides": {}}, headers=ALPHA
        )
        assert rerender.status_code == 429 and "Retry-After" in rerender.headers
        assert "submit rate" in rerender.json()["detail"]


def test_an_export_cut_off_mid_stream_leaves_nothing_behind(local, tmp_path):
    """A client that reads the first megabyte and goes away: the server closes what it was
    reading, its export count goes back to 0, and it wrote nothing to disk."""
    _settings, web, app, inputs = local
    job_id = local_post(web, local_doc(inputs, "big-export", sizes=(40, 48, 56, 64))).json()["job"]
    store = app.state.web.store
    info = store.get(job_id)
    for render in store.specs(job_id):
        claim = store.claim(job_id, render.id, "W", 60, 3)
        path = Path(info.location.root, render.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x89PNG" + bytes(3 << 20))  # 3 MiB each: many chunks
        store.finish(Held(job_id, render.id, claim.attempt), "done")
    store.decide(job_id, "approved", [(r.id, None) for r in store.specs(job_id)])
    whole = zipfile.ZipFile(io.BytesIO(web.get(f"/v1/jobs/{job_id}/export", headers=ALPHA).content))
    assert [i.file_size for i in whole.infolist()][:-1] == [4 + (3 << 20)] * 8  # streamed whole
    before = {p for p in tmp_path.rglob("*")}
    server = Served(app)
    try:
        with (
            httpx.Client(base_url=server.url, timeout=30) as client,
            client.stream("GET", f"/v1/jobs/{job_id}/export", headers=ALPHA) as answer,
        ):
            assert answer.status_code == 200
            got = next(answer.iter_raw(1 << 20))
            assert got[:2] == b"PK"
            assert app.state.web.exports == 1
        wait_for(lambda: app.state.web.exports == 0, 15, "the export to be let go")
    finally:
        server.stop()
    assert {p for p in tmp_path.rglob("*")} == before


def test_jobs_are_searched_by_name_status_submitter_and_date(local):
    _settings, web, app, inputs = local
    a = local_post(web, local_doc(inputs, "autumn-sale")).json()["job"]
    b = local_post(web, local_doc(inputs, "winter-sale")).json()["job"]
    rendered(app, a)

    def found(**q) -> list[str]:
        return [j["job"] for j in web.get("/v1/jobs", params=q, headers=ALPHA).json()["jobs"]]

    assert found(q="AUTUMN") == [a]
    assert found(q="sale") == [b, a]
    assert found(status="succeeded") == [a] and found(status="running") == [b]
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert found(since=today, until=today) == [b, a]
    assert found(until="2001-01-01") == []
    assert web.get("/v1/jobs?since=yesterday", headers=ALPHA).status_code == 422
    assert web.get("/v1/jobs?status=lost", headers=ALPHA).status_code == 422
    assert found(submitter="fleet") == []  # none from the command line here
    listed = web.get("/v1/jobs", params={"q": "sale"}, headers=ALPHA).json()["jobs"]
    assert listed[1]["finished"] and listed[1]["created"] and listed[0]["finished"] is None
    page = web.get("/ui", params={"q": "winter"}, headers=ALPHA).text
    assert f'data-job="{b}"' in page and f'data-job="{a}"' not in page


def test_the_pages_decide_say_a_stale_decision_and_step_through_the_filter(job):
    web, _app, job_id, _ = job
    log_in(web, "alpha")
    csrf = session_csrf(web)
    renders = renders_of(web, job_id)
    first, second = renders[0]["render"], renders[1]["render"]
    page = web.get(f"/ui/jobs/{job_id}/renders/{first}")
    assert page.status_code == 200
    for element in ('id="approve"', 'id="reject"', 'id="note"', 'id="next"', 'id="content-photo"'):
        assert element in page.text, element
    assert 'id="prev"' not in page.text  # the first render
    form = {"csrf": csrf, "version": "0", "decision": "rejected", "note": "grainy", "query": ""}
    advance = re.search(r'name="advance" value="([^"]+)"', page.text).group(1)
    done = web.post(
        f"/ui/jobs/{job_id}/renders/{first}/review",
        data={**form, "advance": advance},
        follow_redirects=False,
    )
    assert done.status_code == 303 and done.headers["location"] == advance.replace("&amp;", "&")
    shown = web.get(done.headers["location"])
    assert "1 render(s) rejected" in shown.text and f"/renders/{second}" in str(shown.url)
    # a second tab still showing version 0 approves: said, not recorded
    late = web.post(
        f"/ui/jobs/{job_id}/renders/{first}/review",
        data={**form, "decision": "approved"},
        follow_redirects=True,
    )
    assert "not recorded: decided meanwhile: rejected by alpha" in late.text
    assert 'class="notice refused"' in late.text
    gallery = web.get(f"/ui/jobs/{job_id}/gallery?decision=rejected")
    assert gallery.text.count('class="badge badge-rejected"') == 1
    assert web.get(f"/ui/jobs/{job_id}/gallery?decision=maybe").status_code == 422
    compare = web.get(f"/ui/jobs/{job_id}/compare", params={"content": renders[0]["content"]})
    assert compare.status_code == 200 and compare.text.count("<td><a href=") == 4
    photo = web.get(f"/v1/jobs/{job_id}/renders/{first}/content?thumbnail=true", headers=ALPHA)
    assert photo.status_code == 200 and photo.headers["content-type"] == "image/jpeg"
    bulk = web.post(
        f"/ui/jobs/{job_id}/reviews",
        data={"csrf": csrf, "action": "approved:filter", "f_decision": "undecided", "query": ""},
        follow_redirects=True,
    )
    assert (
        "3 render(s) approved" in bulk.text
        and "every output of the job now has a decision" in bulk.text
    )


def test_concurrent_tabs_deciding_at_once_lose_nothing(job):
    """Eight threads, each a reviewer that read version 0, decide the same render at once:
    exactly one is recorded, every other is told it is stale; none is lost silently."""
    web, _app, job_id, _ = job
    rid = renders_of(web, job_id)[0]["render"]
    barrier = threading.Barrier(8)
    answers = []

    def one(i: int) -> None:
        barrier.wait()
        answers.append(decide(web, job_id, rid, ("approved", "rejected")[i % 2], 0, f"tab {i}"))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] + [409] * 7, codes
    winner = next(a for a in answers if a.status_code == 200).json()["review"]
    for a in answers:
        if a.status_code == 409:
            assert a.json()["current"]["note"] == winner["note"]


def test_an_output_named_like_a_table_gets_another_name_in_the_zip(local):
    _settings, web, app, inputs = local
    data = local_doc(inputs, "clash")
    data["styles"] = data["styles"][:1]
    data["output"]["key"] = "renders.csv"  # any key template is allowed
    answer = local_post(web, data)
    assert answer.status_code in (200, 201, 202), answer.text
    job = answer.json()["job"]
    rendered(app, job)
    [r] = renders_of(web, job)
    assert decide(web, job, r["render"], "approved", 0).status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(web.get(f"/v1/jobs/{job}/export", headers=ALPHA).content))
    names = archive.namelist()
    assert len(names) == len(set(names)) == 2 and f"{job}/renders.csv" in names, names
    rows = archive.read("renders.csv").decode()
    assert f"{job}/renders.csv" in rows


def test_the_rerender_form_names_every_problem(local):
    _settings, web, app, inputs = local
    job = local_post(web, local_doc(inputs, "form")).json()["job"]
    rendered(app, job)
    rid = renders_of(web, job)[0]["render"]
    log_in(web, "alpha")
    csrf = session_csrf(web)
    answer = web.post(
        f"/ui/jobs/{job}/rerender",
        data={"csrf": csrf, "render": rid, "seed": "x", "preset": "max", "color": "sepia"},
        headers={"Accept": "application/json"},
    )
    assert answer.status_code == 422
    text = answer.text
    for field in ("seed", "preset", "color"):
        assert f"overrides.{field}" in text, (field, text[:600])


def test_a_bulk_filter_counts_only_outputs_and_says_when_it_was_cut(local, monkeypatch):
    """Failed renders first do not use up the selection; past the limit, the answer says so."""
    _settings, web, app, inputs = local
    job = local_post(web, local_doc(inputs, "cut", sizes=(40, 48))).json()["job"]
    ids = sorted(r.id for r in app.state.web.store.specs(job))
    rendered(app, job, fail=tuple(ids[:2]))
    monkeypatch.setattr(review, "SELECTION_LIMIT", 2)  # scaled down
    monkeypatch.setattr(review.selected, "__defaults__", (2, False))
    made = web.post(
        f"/v1/jobs/{job}/reviews", json={"decision": "approved", "filter": {}}, headers=ALPHA
    ).json()
    assert made["recorded"] == 2 and made["truncated"] is True, made
    assert "ask again for the rest" in made["detail"]


def test_next_is_found_past_a_pages_scan_budget(local, monkeypatch):
    """A filter that passes over more renders than one page scans (2,000; 1 here) still
    finds the next render."""
    _settings, web, app, inputs = local
    job = local_post(web, local_doc(inputs, "steps", sizes=(40, 48))).json()["job"]
    rendered(app, job)
    ids = sorted(r["render"] for r in renders_of(web, job))
    decide(web, job, ids[1], "approved", 0)
    d = list(Reads.renders_page.__defaults__)
    d[6] = 1  # budget
    monkeypatch.setattr(Reads.renders_page, "__defaults__", tuple(d))
    log_in(web, "alpha")
    page = web.get(f"/ui/jobs/{job}/renders/{ids[0]}?decision=undecided")
    assert page.status_code == 200
    assert 'id="next"' in page.text, "an undecided render follows, yet no next"


def test_a_decision_form_never_sends_the_browser_off_the_site(local):
    _settings, web, app, inputs = local
    job = local_post(web, local_doc(inputs, "stale")).json()["job"]
    rendered(app, job)
    rid = renders_of(web, job)[0]["render"]
    log_in(web, "alpha")
    csrf = session_csrf(web)
    decide(web, job, rid, "approved", 0)
    late = web.post(
        f"/ui/jobs/{job}/renders/{rid}/review",
        data={
            "csrf": csrf,
            "version": "0",
            "decision": "rejected",
            "note": "x",
            "query": "",
            "advance": "//evil.example/",
        },
        follow_redirects=False,
    )
    assert late.status_code == 303 and late.headers["location"].startswith("/ui/jobs/")
    ok = web.post(
        f"/ui/jobs/{job}/renders/{rid}/review",
        data={
            "csrf": csrf,
            "version": "1",
            "decision": "rejected",
            "note": "x",
            "query": "a=1",
            "advance": "https://evil.example/",
        },
        follow_redirects=False,
    )
    assert ok.status_code == 303 and ok.headers["location"].startswith("/ui/jobs/")
    assert not re.match(r"^(https?:)?//", ok.headers["location"])


def test_a_storage_error_on_one_output_is_listed_and_the_zip_goes_on(local):
    """S3 away for one output (its first byte not yet read): listed in not-exported.csv with
    why; the others are in the zip."""
    from scheduler.web.problems import Unavailable

    _settings, web, app, inputs = local
    job = local_post(web, local_doc(inputs, "flaky", sizes=(40, 48))).json()["job"]
    rendered(app, job)
    for r in renders_of(web, job):
        decide(web, job, r["render"], "approved", 0)
    outputs = app.state.web.outputs
    real = outputs.stream
    calls = []

    def flaky(location, key, *a, **k):
        calls.append(key)
        if len(calls) == 2:
            raise Unavailable("S3", "connection reset")
        return real(location, key, *a, **k)

    outputs.stream = flaky
    try:
        answer = web.get(f"/v1/jobs/{job}/export", headers=ALPHA)
        archive = zipfile.ZipFile(io.BytesIO(answer.content))
        assert "not-exported.csv" in archive.namelist() and len(archive.namelist()) == 3 + 2
        assert "connection reset" in archive.read("not-exported.csv").decode()
    finally:
        outputs.stream = real
