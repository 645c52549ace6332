"""Two teams on one fleet (issue 26): what a hostile or careless team can neither see nor
slow, proved by generated manifests against the real intake (SeaweedFS, local folders with
links out) and the real server, with every storage call recorded.

The invariants: no storage call (S3 request, directory listing, stat, open) is made for a
team outside its prefixes, and no answer names a key or path outside them. Hypothesis
generates the glob, prefix and URI forms (percent-encodings, ``..``, links, other buckets,
other schemes, case tricks); the assertions do not depend on which form it found."""

from __future__ import annotations

import builtins
import json
import os
import posixpath
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.intake import Refused, Submitter, Unchecked, check, plan
from tests.support.paths import ROOT
from tests.support.tenants import ALPHA_HOOK, BETA_HOOK, PNG, fleet_settings, two_teams

# In every name that is not team A's (objects, files, the server's folders, other buckets)
SECRET_MARKS = ("zz-private", "/usr/", "/etc/", "other-bucket", "ins-secrets")


@pytest.fixture(scope="module")
def world(s3_server, tmp_path_factory):
    """Two teams on the session's S3 and local folders (tests/support/tenants.py)."""
    with two_teams(s3_server, tmp_path_factory.mktemp("disk")) as world:
        yield world


class Recorder:
    """Every S3 request and every file-system look (stat, lstat, readlink, scandir, open) made
    while recording, from any thread."""

    def __init__(self):
        self.s3: list[tuple[str, dict]] = []
        self.paths: list[str] = []
        self.lock = threading.RLock()  # Hypothesis's tracer may look at files while we record
        self.on = False

    def path(self, p) -> None:
        if self.on and isinstance(p, str | bytes | os.PathLike):
            name = os.fsdecode(p)
            with self.lock:
                self.paths.append(name)

    @contextmanager
    def recording(self):
        from botocore.client import BaseClient

        real_call = BaseClient._make_api_call
        recorder = self

        def call(client, operation, params):
            if recorder.on:
                with recorder.lock:
                    recorder.s3.append((operation, dict(params)))
            return real_call(client, operation, params)

        patches = [mock.patch.object(BaseClient, "_make_api_call", call)]
        for name in ("stat", "lstat", "readlink", "scandir"):
            real = getattr(os, name)

            def wrapped(p=".", *args, _real=real, **kw):
                recorder.path(p)
                return _real(p, *args, **kw)

            patches.append(mock.patch.object(os, name, wrapped))
        real_open = builtins.open

        def opened(file, *args, **kw):
            recorder.path(file)
            return real_open(file, *args, **kw)

        patches.append(mock.patch.object(builtins, "open", opened))
        for p in patches:
            p.start()
        self.on = True
        try:
            yield self
        finally:
            self.on = False
            for p in reversed(patches):
                p.stop()


def _s3_allowed(operation: str, params: dict, prefixes: tuple[str, ...]) -> bool:
    """Whether an S3 request stays inside the prefixes: an object under one, a listing whose
    every possible key is under one, a bucket-level request of a prefix's bucket."""
    bucket = params.get("Bucket", "")
    inside = []
    for p in prefixes:
        if not p.startswith("s3://"):
            continue
        pb, _, pk = p[5:].partition("/")
        inside.append((pb, pk.strip("/")))
    if "Key" in params:
        key = params["Key"]
        return any(
            b == bucket and (not k or key == k or key.startswith(k + "/")) for b, k in inside
        )
    if operation.startswith("List"):
        listed = params.get("Prefix", "")
        return any(b == bucket and (not k or listed.startswith(k + "/")) for b, k in inside)
    return any(b == bucket for b, _ in inside)


# What the process reads of its own, whatever a manifest says: boto3's configuration, the
# interpreter and its packages, this code.
OWN = (
    os.path.expanduser("~/.aws"),
    sys.prefix,
    sys.base_prefix,
    str(ROOT),
)


def _path_allowed(path: str, roots: tuple[str, ...]) -> bool:
    """A file-system look inside a root, or at a folder on the way down to one (or one of
    the process's own files)."""
    if not path.startswith("/"):
        return True  # relative: the interpreter's own (its cwd), never a manifest's
    path = posixpath.normpath(path)
    if any(path == own or path.startswith(own + "/") or own.startswith(path + "/") for own in OWN):
        return True
    for root in roots:
        if path == root or path.startswith(root + "/") or root.startswith(path.rstrip("/") + "/"):
            return True
    return path == "/"


segment = st.sampled_from(
    ["team-a", "team-b", "team-a-secrets", "TEAM-A", "..", ".", "%2e%2e", "%252e%252e",
     "%2E%2e", "..%2f", "..;", "link-to-b", "file-to-b.png", "loop", "sub", "shots", "*", "**",
     "?", "[ab]*", "*.png", "one.png", "zz-private-b.png", "", "team-a%2f..%2fteam-b"]
)  # fmt: skip


s3_head = st.sampled_from(
    ["s3://ins/", "s3://INS/", "S3://ins/", "s3:/ins/", "s3://ins-secrets/", "s3://other-bucket/",
     "s3://ins/team-a/../", "s3://ins/team-a/", "s3://ins/team-a", "s3://ins//team-a/",
     "s3://xn--ins/", "s3://ins./"]
)  # fmt: skip


local_head = st.sampled_from(["{a}/", "{b}/", "{root}/", "/usr/share/", "/etc/", "{a}/../",
                              "file://{a}/", "file://localhost{b}/", "{a}/sub/../../team-b/",
                              "~root/", "relative/", "/proc/self/root{a}/"])  # fmt: skip


@st.composite
def hostile(draw, world_paths):
    """One input written some way: a URI, a glob or a prefix, on S3 or the local disk."""
    on_s3 = draw(st.booleans())
    head = draw(s3_head if on_s3 else local_head).format(**world_paths)
    tail = "/".join(draw(st.lists(segment, min_size=0, max_size=4)))
    text = head + tail
    kind = draw(st.sampled_from(["uri", "glob", "prefix", "shot", "mask", "style", "weights"]))
    return kind, text


def manifest_for(kind: str, text: str) -> dict:
    good = "s3://ins/team-a/one.png"
    data = {
        "name": "hostile",
        "output": {"location": "s3://outs/team-a/x", "key": "{content}/{style}-{size}-{id}.png"},
        "content": [good],
        "styles": [{"name": "s", "image": good}],
        "params": {"preset": "draft", "sizes": [32]},
    }
    if kind == "uri":
        data["content"] = [text]
    elif kind in ("glob", "prefix"):
        data["content"] = [{kind: text}]
    elif kind == "shot":
        data["content"] = [{"uri": text, "focus": [0.5, 0.5]}]
    elif kind == "mask":
        data["content"] = [{"uri": good, "mask": text}]
    elif kind == "style":
        data["styles"] = [{"name": "s", "images": [{"uri": text, "weight": 1}]}]
    else:
        data["weights"] = text
    return data


def _names_nothing_outside(text: str, world) -> None:
    """No name of what lies outside team A's prefixes: the marks every such name carries,
    team B's folder, and no S3 URI outside them."""
    import re

    from common.access import under

    for mark in SECRET_MARKS:
        assert mark not in text, (mark, text)
    assert str(world["b"]) not in text, text
    prefixes = world["team"].allowed_inputs + world["team"].allowed_outputs
    for uri in re.findall(r"s3://[^\s'\",;)\]]*", text):
        uri = uri.rstrip(".:")
        inside = any(under(uri, p) or under(p, uri) for p in prefixes if p.startswith("s3://"))
        assert inside, (uri, text)


@settings(
    max_examples=int(os.environ.get("STYLEBATCH_HOSTILE_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=os.environ.get("STYLEBATCH_HYPOTHESIS_RANDOM") is None,
)
@given(data=st.data())
def test_a_hostile_manifest_touches_and_names_nothing_outside_the_teams_prefixes(world, data):
    paths = {"a": str(world["a"]), "b": str(world["b"]), "root": str(world["root"])}
    kind, text = data.draw(hostile(paths))
    who = Submitter(world["team"], "alpha", ("a-webhook-secret-0123456789",))
    roots = tuple(
        form
        for p in world["team"].allowed_inputs + world["team"].allowed_outputs
        if p.startswith("/")
        for form in (posixpath.normpath(p), str(Path(p).resolve()))
    )
    recorder = Recorder()
    told = []
    with recorder.recording():
        try:
            job = plan(manifest_for(kind, text), "web:alpha", Path("/nonexistent-web"), who)
            check(job, who)
            told.append(json.dumps([r.to_dict() for r in job.renders]))
        except Refused as exc:
            told += [str(p) for p in exc.problems]
        except Unchecked as exc:
            told.append(str(exc))
    prefixes = world["team"].allowed_inputs + world["team"].allowed_outputs
    for operation, params in recorder.s3:
        assert _s3_allowed(operation, params, prefixes), (kind, text, operation, params)
    for path in recorder.paths:
        assert _path_allowed(path, roots), (kind, text, path)
    for message in told:
        _names_nothing_outside(message, world)


def test_the_generator_reaches_the_cases_that_used_to_leak(world):
    """The cases the issue found, each as the property test sees it: refused before any
    listing, and nothing named."""
    a, b = str(world["a"]), str(world["b"])
    cases = [
        ("glob", "s3://ins/team-b/*/*"),
        ("prefix", "s3://ins/team-b/"),
        ("prefix", "s3://ins/team-a"),  # a prefix is a folder: never team-a-secrets
        ("glob", "s3://ins/team-a*"),
        ("glob", "s3://other-bucket/*"),
        ("glob", "/usr/share/pixmaps/*.png"),
        ("prefix", "/usr"),
        ("glob", f"{a}/link-to-b/*.png"),
        ("uri", f"{a}/file-to-b.png"),
        ("uri", f"{b}/zz-private-f.png"),
        ("glob", f"{a}/loop/*"),
    ]
    who = Submitter(world["team"], "alpha")
    for kind, text in cases:
        recorder = Recorder()
        with recorder.recording():
            try:
                job = plan(manifest_for(kind, text), "web:alpha", Path("/nonexistent-web"), who)
                listed = sorted({r.content for r in job.renders})
            except Refused as exc:
                listed = [str(p) for p in exc.problems]
        prefixes = world["team"].allowed_inputs
        assert all(_s3_allowed(o, p, prefixes) for o, p in recorder.s3), (text, recorder.s3)
        for entry in listed:
            _names_nothing_outside(entry, world)
    # and what is the team's own is found, links inside kept, links out dropped
    job = plan(manifest_for("glob", f"{a}/*.png"), "web:alpha", Path("/x"), who)
    assert sorted(Path(r.content).name for r in job.renders) == ["inside.png", "one.png"]
    job = plan(manifest_for("prefix", "s3://ins/team-a"), "web:alpha", Path("/x"), who)
    assert sorted(r.content for r in job.renders) == [
        "s3://ins/team-a/one.png",
        "s3://ins/team-a/shots/two.png",
    ]


def test_listing_is_bounded_and_the_refusal_names_the_limit(world, tmp_path):
    import dataclasses

    many = world["a"] / "many"
    many.mkdir(exist_ok=True)
    for i in range(60):
        (many / f"{i:03}.png").write_bytes(PNG)
    tight = dataclasses.replace(world["team"], max_listed=50)
    who = Submitter(tight, "alpha")
    with pytest.raises(Refused) as info:
        plan(manifest_for("prefix", str(many)), "web:alpha", Path("/x"), who)
    assert "STYLEBATCH_MAX_LISTED" in str(info.value.problems)
    slow = dataclasses.replace(world["team"], list_seconds=0.0)
    with pytest.raises(Refused) as info:
        plan(manifest_for("prefix", "s3://ins/team-a"), "web:alpha", Path("/x"), Submitter(slow))
    assert "STYLEBATCH_LIST_SECONDS" in str(info.value.problems)


# The same over HTTP: the real app (scheduler/web), two teams, Redis and SeaweedFS.


@pytest.fixture
def web(world, redis_db):
    from fastapi.testclient import TestClient

    from scheduler.web.app import create_app

    app = create_app(fleet_settings(world, redis_db))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def api_post(client, team: str, data, query: str = "", headers=None):
    from tests.support.web import bearer

    body = json.dumps(data) if not isinstance(data, str | bytes) else data
    return client.post(
        f"/v1/jobs{query}",
        content=body,
        headers={**bearer(team), "Content-Type": "application/json", **(headers or {})},
    )


@settings(
    max_examples=int(os.environ.get("STYLEBATCH_HOSTILE_EXAMPLES", "150")) // 3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=os.environ.get("STYLEBATCH_HYPOTHESIS_RANDOM") is None,
)
@given(data=st.data())
def test_hostile_posts_to_the_server_are_refused_and_name_nothing(world, web, data):
    paths = {"a": str(world["a"]), "b": str(world["b"]), "root": str(world["root"])}
    kind, text = data.draw(hostile(paths))
    query = data.draw(st.sampled_from(["", "?validate=true"]))
    answer = api_post(web, "alpha", manifest_for(kind, text), query)
    assert answer.status_code < 500 or answer.status_code == 503, answer.text
    _names_nothing_outside(answer.text, world)
    if answer.status_code >= 400:
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["code"] and answer.json()["type"].startswith("urn:stylebatch:")


def test_the_openapi_document_declares_security_errors_and_the_webhook(web):
    doc = web.get("/openapi.json").json()
    schemes = doc["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"http", "apiKey"}
    problem = doc["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail", "code"} <= set(problem["properties"])
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for path, operations in doc["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, op in operations.items():
            assert op.get("security"), (method, path)
            for status in ("401", "404", "429", "503"):
                body = op["responses"][status]["content"]
                assert "application/problem+json" in body, (method, path, status)
            for status, answer in op["responses"].items():
                for media in answer.get("content", {}):
                    assert not (media == "application/json" and "image" in path), (path, status)
    assert "job.ended" in doc["webhooks"]
    missing = web.get("/v1/jobs/nope-0123456789ab", headers={"Authorization": "Bearer x"})
    assert (
        missing.status_code == 401 and missing.headers["content-type"] == "application/problem+json"
    )
    from tests.support.web import bearer

    gone = web.get("/v1/jobs/nope-0123456789ab", headers=bearer("alpha"))
    assert gone.status_code == 404 and gone.headers["content-type"] == "application/problem+json"
    body = gone.json()
    assert body["code"] == "not-found" and body["status"] == 404 and body["instance"]
    assert web.get("/jobs/nope-0123456789ab", headers=bearer("alpha")).json() == {
        **body,
        "instance": "/jobs/nope-0123456789ab",
    }  # the unversioned alias answers the same


def test_a_forged_login_from_another_site_changes_no_ones_team(world, web):
    """A page on another site auto-submits the attacker's token to /ui/login: refused by
    Origin and Sec-Fetch-Site, and without the pre-login value that only this site's form
    holds. The victim stays in their own team."""
    from tests.support.web import TOKENS, log_in

    assert log_in(web, "beta").status_code == 303  # the victim, logged in as beta
    victim = web.cookies.get("sb_session")
    forged = {"token": TOKENS["alpha"], "next": "/ui"}
    for headers in (
        {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        {"Origin": "https://evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "null"},
        {},  # no headers (an old browser): the pre-login value is still missing
    ):
        answer = web.post("/ui/login", data=forged, headers=headers, follow_redirects=False)
        assert answer.status_code == 403, (headers, answer.status_code)
        assert "sb_session" not in answer.headers.get("set-cookie", ""), headers
        assert web.cookies.get("sb_session") == victim
    page = web.get("/ui")
    assert page.status_code == 200 and "team beta" in page.text
    web.cookies.clear()


def test_sessions_are_random_ids_that_logout_ends_and_time_ends(world, redis_db):
    import time

    from fastapi.testclient import TestClient

    from scheduler.web.app import create_app
    from tests.support.web import TOKENS, log_in, session_csrf

    app = create_app(fleet_settings(world, redis_db, web_session_seconds=2))
    with TestClient(app, raise_server_exceptions=False) as client:
        assert log_in(client, "alpha").status_code == 303
        session = client.cookies.get("sb_session")
        assert session and TOKENS["alpha"] not in session and len(session) >= 40
        assert client.get("/ui").status_code == 200
        ended = client.post("/ui/logout", data={"csrf": session_csrf(client)})
        assert ended.status_code in (200, 303)
        client.cookies.clear()
        client.cookies.set("sb_session", session)  # the old cookie, kept by someone
        assert client.get("/ui").status_code == 401
        client.cookies.clear()
        assert log_in(client, "alpha").status_code == 303
        assert client.get("/ui").status_code == 200
        time.sleep(2.5)
        assert client.get("/ui").status_code == 401  # expired


def test_each_team_has_its_rate_and_429_says_when(world, redis_db):
    from fastapi.testclient import TestClient

    from scheduler.web.app import create_app
    from tests.support.web import bearer

    settings = fleet_settings(
        world, redis_db, web_request_burst=5, web_requests_per_second=1.0, web_submit_burst=2
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        answers = [client.get("/v1/jobs", headers=bearer("alpha")) for _ in range(8)]
        codes = [a.status_code for a in answers]
        assert codes[:5] == [200] * 5 and set(codes[5:]) == {429}, codes
        first, refused = answers[0], answers[-1]
        assert (
            first.headers["ratelimit-limit"] == "5" and first.headers["ratelimit-remaining"] == "4"
        )
        assert "limit=5" in first.headers["ratelimit"]
        assert refused.headers["content-type"] == "application/problem+json"
        assert int(refused.headers["retry-after"]) >= 1 and refused.json()["code"] == "rate-limited"
        assert client.get("/v1/jobs", headers=bearer("beta")).status_code == 200  # its own
        good = manifest_for("uri", "s3://ins/team-a/one.png")
        posts = [api_post(client, "beta", good, "?validate=true").status_code for _ in range(3)]
        assert posts[:2] != [429, 429] and posts[-1] == 429, posts  # submits: a burst of 2


def test_an_idempotency_key_replays_the_first_answer(web):
    good = manifest_for("uri", "s3://ins/team-a/one.png")
    key = {"Idempotency-Key": "nightly-2026-12-07"}
    first = api_post(web, "alpha", good, headers=key)
    assert first.status_code == 201, first.text
    again = api_post(web, "alpha", good, headers=key)
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["job"] == first.json()["job"]
    plain = api_post(web, "alpha", good)  # no key: the job exists
    assert plain.status_code == 200 and plain.json()["job"] == first.json()["job"]
    other = dict(good, name="another")
    reused = api_post(web, "alpha", other, headers=key)
    assert reused.status_code == 422 and reused.json()["code"] == "idempotency-key-reused"
    theirs = manifest_for("uri", "s3://ins/team-b/zz-private-b.png")
    theirs["styles"][0]["image"] = "s3://ins/team-b/zz-private-b.png"
    theirs["output"]["location"] = "s3://outs/team-b/x"
    assert api_post(web, "beta", theirs, headers=key).status_code == 201  # keys are per team


def test_a_5000_digit_integer_is_a_422_everywhere(web):
    from tests.support.web import bearer, log_in, session_csrf

    digits = "9" * 5000
    for body, kind in (
        (f'{{"name": "x", "priority": {digits}}}', "application/json"),
        (f"name: x\npriority: {digits}\n", "application/yaml"),
    ):
        headers = {**bearer("alpha"), "Content-Type": kind}
        answer = web.post("/v1/jobs", content=body, headers=headers)
        assert answer.status_code == 422, answer.text[:300]
        assert answer.json()["code"] == "invalid-manifest" and digits not in answer.text
    log_in(web, "alpha")
    form = web.post(
        "/ui/jobs", data={"manifest": f"name: x\npriority: {digits}\n", "csrf": session_csrf(web)}
    )
    assert form.status_code == 422 and "Traceback" not in form.text
    assert "number" in form.text and "{&#34;" not in form.text  # said, not raw JSON
    web.cookies.clear()


def test_every_key_asked_for_is_planned_and_counted(web):
    """1,000 style names sharing one image: one render per content and size, written to all
    1,000 keys; the plan says so before anything runs, and the job records the outputs."""
    data = manifest_for("uri", "s3://ins/team-a/one.png")
    data["output"]["key"] = "{content}/{style}-{size}.png"
    data["styles"] = [
        {"name": f"look-{i:04}", "image": "s3://ins/team-a/one.png"} for i in range(1000)
    ]
    data["params"]["sizes"] = [32, 48]
    checked = api_post(web, "alpha", data, "?validate=true")
    assert checked.status_code == 200, checked.text
    plan_ = checked.json()
    assert plan_["renders"] == 2 and plan_["outputs"] == 2000 and plan_["copies"] == 1998
    assert any("copies" in n for n in plan_["notes"])
    data["content"] = ["s3://ins/team-a/one.png", "s3://ins/team-a/one.png"]  # listed twice
    made = api_post(web, "alpha", data)
    assert made.status_code == 201, made.text
    job = made.json()
    assert job["plan"]["collapsed"] == 2000 and job["outputs_planned"] == 2000
    from tests.support.web import bearer

    one = web.get(f"/v1/jobs/{job['job']}/renders", params={"style": "look-0999"},
                  headers=bearer("alpha")).json()["renders"]  # fmt: skip
    assert len(one) == 2 and all(len(r["copies"]) == 999 for r in one)


def test_each_teams_webhooks_are_signed_with_its_own_secret_and_a_time(world):
    import dataclasses
    import time

    from common.notify import check_webhook, sign, signing_secrets, verify

    settings = dataclasses.replace(fleet_settings(world, "redis://unused/0"), webhook_secret="")
    assert signing_secrets(settings, "alpha") == (ALPHA_HOOK,)
    assert signing_secrets(settings, "beta") == (BETA_HOOK,)
    assert signing_secrets(settings, "") == ()  # no fleet secret: a job with no team has none
    assert check_webhook("https://hooks.example/a", settings, "")  # refused: nothing to sign
    body = b'{"event": "job.ended"}'
    header = sign(body, (ALPHA_HOOK,))
    assert verify(body, header, ALPHA_HOOK) and not verify(body, header, BETA_HOOK)
    assert not verify(body + b" ", header, ALPHA_HOOK)
    old = sign(body, (ALPHA_HOOK,), at=int(time.time()) - 301)
    assert not verify(body, old, ALPHA_HOOK)  # a replay, five minutes on
    rotating = sign(body, ("new-secret-0123456789ab", ALPHA_HOOK))
    assert verify(body, rotating, ALPHA_HOOK) and verify(body, rotating, "new-secret-0123456789ab")
    assert rotating.count("v1=") == 2


@pytest.mark.slow
def test_a_hostile_team_is_refused_fast_and_slows_no_other(tmp_path):
    """bench/tenant_bench.py, short: team alpha posts hostile manifests from two threads while
    team beta polls its jobs, against `stylebatch serve` in a process of its own."""
    from bench.tenant_bench import run

    figures = run(6.0, tmp_path, objects=2100)
    assert figures["answers that were not a 422 naming nothing"] == []
    alone = figures["beta GET /v1/jobs alone"]
    attacked = figures["beta GET /v1/jobs while alpha attacks"]
    # The bound is 100 ms (met on a quiet machine: docs/web.md). A machine busy with other
    # work (another test's containers, say) slows beta alone too: then the attack may add at
    # most that much again. Before planner processes the attack multiplied it tenfold.
    assert attacked["p99_ms"] < max(100, 3 * alone["p99_ms"]), figures
    for kind, took in figures["refusals"].items():
        assert took["median_ms"] < 1000, (kind, took)  # under 1 s, half the time or more
        if not kind.startswith("its own"):  # refused by confinement alone, before listing
            assert took["median_ms"] < 250 and took["max_ms"] < 2000, (kind, took)
