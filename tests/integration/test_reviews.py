"""Review decisions as fleet state, against a real Redis and the real Lua scripts: versions
that refuse a stale write, counts that match the decisions, the review complete once, a
re-render's lineage both ways, a selection of the cross product (``only``), the summary's
review section and cost.csv; and a generative proof that concurrent reviewers lose nothing
silently (Hypothesis's stateful testing, decisions against versions they saw)."""

from __future__ import annotations

import csv
import io
import json

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from common.errors import ManifestError
from common.expand import plan_job
from common.state import Held, JobStore
from scheduler import review
from tests.support.manifests import local_settings, tiny_manifest, write_manifest

LIVE, CAP = 60.0, 3


@pytest.fixture
def store(redis_db):
    return JobStore.from_url(redis_db)


def made(store: JobStore, plan, ended: dict[str, str] | None = None, end: bool = True) -> str:
    """The plan recorded, its renders ended as ``ended`` says (done by default), and the job
    ended when every render has."""
    assert store.create(plan)
    for r in plan.renders:
        claim = store.claim(plan.job_id, r.id, "W", LIVE, CAP)
        status = (ended or {}).get(r.id, "done")
        fields = {"seconds": 1.5, "device": "cpu"} if status == "done" else {}
        store.finish(Held(plan.job_id, r.id, claim.attempt), status, **fields)
    if end:
        assert store.begin_finalize(plan.job_id, "t", 60) == "ok"
        assert store.end_job(plan.job_id, "done", token="t")
    return plan.job_id


@pytest.fixture
def plan(tmp_path, images):
    data = tiny_manifest(images, tmp_path / "out", sizes=[40, 48])
    return plan_job(write_manifest(tmp_path, data), local_settings(), "random")


class Seen:
    """The app as decide() sends to it: what it was asked to send."""

    def __init__(self):
        self.sent: list[tuple[str, list]] = []

    def send_task(self, name, args=None, **kw):
        self.sent.append((name, args))


def test_a_stale_write_is_refused_with_the_decision_that_stands(store, plan):
    job = made(store, plan)
    rid = plan.renders[0].id
    first = store.decide(job, "approved", [(rid, 0)], "", "alpha")
    assert [(r.outcome, r.version) for r in first.results] == [("recorded", 1)]
    # a second reviewer saw version 0 too: refused, told what stands
    second = store.decide(job, "rejected", [(rid, 0)], "too dark", "alpha")
    [answer] = second.results
    assert answer.outcome == "stale" and answer.review["decision"] == "approved"
    assert answer.version == 1
    # looking again (version 1), the change goes through
    third = store.decide(job, "rejected", [(rid, 1)], "too dark", "alpha")
    assert third.results[0].outcome == "recorded" and third.results[0].version == 2
    # the same again changes nothing
    again = store.decide(job, "rejected", [(rid, None)], "too dark", "alpha")
    assert again.results[0].outcome == "unchanged" and again.results[0].version == 2
    info = store.get(job)
    assert info.review() == {"approved": 0, "rejected": 1, "superseded": 0, "undecided": 3}


def test_only_renders_with_an_output_are_reviewed_and_a_gone_job_says_so(store, plan):
    rid = plan.renders[0].id
    job = made(store, plan, ended={rid: "failed"})
    done = store.decide(job, "approved", [(rid, None), ("nope", None)], "", "alpha")
    assert [r.outcome for r in done.results] == ["no-output", "missing"]
    assert store.decide("no-such-job-0123456789ab", "approved", [(rid, None)]).gone
    store.delete(job)
    assert store.decide(job, "approved", [(plan.renders[1].id, None)]).gone


def test_the_review_completes_once_and_a_webhook_is_owed_once(store, tmp_path, images):
    data = tiny_manifest(images, tmp_path / "out")
    data["notify"] = {"webhook": "https://hooks.example.com/x"}
    plan = plan_job(write_manifest(tmp_path, data), local_settings(), "random")
    job = made(store, plan)
    ids = [r.id for r in plan.renders]
    first = store.decide(job, "approved", [(ids[0], None)], "", "alpha")
    assert not first.reviewed and first.publish
    last = store.decide(job, "rejected", [(ids[1], None)], "", "alpha")
    assert last.reviewed and not last.publish  # its publication is due already
    info = store.get(job)
    assert info.meta["review_webhook_delivery"].startswith(f"{job}:reviewed:")
    owed = store.owed_webhooks(-1)
    assert (job, info.meta["review_webhook_delivery"], "reviewed") in owed
    changed = store.decide(job, "approved", [(ids[1], None)], "", "alpha")
    assert not changed.reviewed  # complete once, not again on a change
    delivery = info.meta["review_webhook_delivery"]
    assert store.claim_delivery(job, delivery, "n1", 60, "reviewed") == ("claimed", 1)
    assert store.claim_delivery(job, delivery, "n2", 60, "reviewed")[0] == "busy"
    assert store.delivery_outcome(job, delivery, "n1", "delivered", "delivered", 0, "reviewed")
    assert all(e != "reviewed" for _, _, e in store.owed_webhooks(-1))
    # the job's own end delivery is apart, still owed
    assert any(e == "ended" for _, _, e in store.owed_webhooks(-1))


def test_decisions_made_while_it_ran_complete_the_review_at_its_end(store, plan):
    job = made(store, plan, end=False)
    store.decide(job, "approved", [(r.id, None) for r in plan.renders], "", "alpha")
    assert "reviewed" not in store.get(job).meta  # still finalizing
    assert store.begin_finalize(job, "t", 60) == "ok"
    assert store.end_job(job, "done", token="t")
    assert "reviewed" in store.get(job).meta


def test_the_publication_is_taken_once_and_waits_for_a_finalizing_job(store, plan):
    job = made(store, plan, end=False)
    rid = plan.renders[0].id
    assert store.decide(job, "approved", [(rid, None)]).publish
    assert store.take_review_publish(job) == "wait"
    assert store.begin_finalize(job, "t", 60) == "ok" and store.end_job(job, "done", token="t")
    assert store.take_review_publish(job) == "publish"
    assert store.take_review_publish(job) == "none"


def test_review_keys_live_as_long_as_the_job(store, plan):
    job = made(store, plan)
    store.decide(job, "approved", [(plan.renders[0].id, None)])
    keys = store.keys(job)
    assert 0 < store.r.ttl(keys.reviews) <= store.r.ttl(keys.record)
    store.delete(job)
    assert not store.r.exists(keys.reviews)


def test_the_gallery_filters_by_decision_partial_content_and_pages_backwards(store, plan):
    job = made(store, plan)
    ids = sorted(r.id for r in plan.renders)
    store.decide(job, "approved", [(ids[0], None), (ids[2], None)])
    page = store.renders_page(job, decision="approved")
    assert [r.id for r, _ in page.renders] == [ids[0], ids[2]]
    assert page.renders[0][1]["review"]["decision"] == "approved"
    assert len(store.renders_page(job, decision="undecided").renders) == 2
    assert len(store.renders_page(job, content="TUBIN", contains=True).renders) == 4
    assert store.renders_page(job, content="TUBIN").renders == []
    back = store.renders_page(job, after=ids[2], backwards=True, limit=1)
    assert [r.id for r, _ in back.renders] == [ids[1]]


def test_a_summary_and_cost_table_carry_the_decisions(store, plan):
    job = made(store, plan)
    ids = [r.id for r in plan.renders]
    store.decide(job, "approved", [(ids[0], None)], "", "alpha")
    store.decide(job, "rejected", [(ids[1], None)], "too busy", "alpha")
    summary = store.summary(job)
    data = json.loads(summary.to_json())
    assert data["review"] == {"approved": 1, "rejected": 1, "superseded": 0, "undecided": 2}
    rows = {r["render"]: r for r in csv.DictReader(io.StringIO(summary.cost_csv().decode()))}
    assert rows[ids[0]]["decision"] == "approved" and rows[ids[0]]["reviewer"] == "alpha"
    assert rows[ids[1]]["decision"] == "rejected"
    assert rows[ids[2]]["decision"] == ""
    noted = next(r for r in data["renders"] if r["id"] == ids[1])
    assert noted["review"]["note"] == "too busy"


def test_only_keeps_the_picked_renders_and_names_a_pick_that_matches_none(tmp_path, images):
    data = tiny_manifest(images, tmp_path / "out", sizes=[40, 48])
    data["only"] = [
        {"content": "tubingen", "style": "wave", "size": 48},
        {"content": str(images["tubingen"]), "style": "starry", "size": 40},
    ]
    plan = plan_job(write_manifest(tmp_path, data), local_settings(), "random")
    assert sorted((r.style, r.size) for r in plan.renders) == [("starry", 40), ("wave", 48)]
    data["only"].append({"content": "tubingen", "style": "wave", "size": 56})
    with pytest.raises(ManifestError) as refused:
        plan_job(write_manifest(tmp_path, data), local_settings(), "random")
    assert [p.where for p in refused.value.problems] == ["only[2]"]


def test_a_re_render_records_its_lineage_and_its_approval_supersedes_the_old(store, plan, tmp_path):
    job = made(store, plan)
    parent = store.get(job)
    picked = [r for r in plan.renders if r.style == "wave" and r.size == 48]
    overrides, problems = review.read_overrides({"style_weight": 4.0})
    assert not problems
    document = review.rerender_document(parent, picked, overrides)
    assert document["only"] == [{"content": picked[0].content, "style": "wave", "size": 48}]
    assert document["styles"][0]["params"]["style_weight"] == 4.0
    assert document["output"]["location"].startswith(str(parent.location) + "/rerenders/")
    # the same selection and overrides make the same manifest (the same job)
    assert review.rerender_document(parent, picked, overrides) == document
    child_plan = plan_job(write_manifest(tmp_path, document), local_settings(), "random")
    assert [r.params["style_weight"] for r in child_plan.renders] == [4.0]
    assert child_plan.renders[0].id != picked[0].id
    child = made(store, child_plan)
    pairs = review.lineage_pairs(picked, child_plan.renders)
    assert store.set_lineage(child, [(c, f"{job} {p}") for p, c in pairs])
    assert store.add_versions(job, [(p, f"{child} {c}") for p, c in pairs])
    assert store.add_versions(job, [(p, f"{child} {c}") for p, c in pairs])  # once
    assert store.versions(job, picked[0].id) == [(child, child_plan.renders[0].id)]

    app = Seen()
    store.decide(job, "rejected", [(picked[0].id, None)], "more style", "alpha")
    outcome = review.decide(store, app, child, "approved", [(child_plan.renders[0].id, 0)])
    assert outcome.recorded == 1 and outcome.superseded == 1
    old = store.reviews(job, [picked[0].id])[picked[0].id]
    assert old["decision"] == "superseded"
    assert old["superseded_by"] == f"{child} {child_plan.renders[0].id}"
    assert {n for n, _ in app.sent} == {"stylebatch.review_published"}
    # the job's approved set takes the newer version in place of the superseded one
    store.decide(job, "approved", [(plan.renders[0].id, None)])
    entries = list(review.export_entries(store, store.get(job), {}))
    assert {e.row["render"] for e in entries} == {plan.renders[0].id, child_plan.renders[0].id}
    newer = next(e for e in entries if e.row["job"] == child)
    assert newer.name.startswith("rerenders/") and newer.name.endswith(child_plan.renders[0].key)


def test_overrides_are_checked_each_problem_named():
    _, problems = review.read_overrides({"style_weight": -1, "preset": "max", "colour": 1})
    assert {p["where"] for p in problems} == {
        "overrides.style_weight",
        "overrides.preset",
        "overrides.colour",
    }
    assert review.read_overrides({})[1][0]["message"] == "give at least one change"


@pytest.fixture
def hooked(tmp_path, images):
    data = tiny_manifest(images, tmp_path / "out", sizes=[40, 48])
    data["notify"] = {"webhook": "https://hooks.example.com/x"}
    return plan_job(write_manifest(tmp_path, data), local_settings(), "random")


def test_a_retried_job_keeps_its_decisions_while_it_runs_again(store, plan):
    """Its reviews (and lineage) live as long as the job again: no count of decisions gone."""
    ids = sorted(r.id for r in plan.renders)
    job = made(store, plan, ended={ids[0]: "failed"})
    store.decide(job, "approved", [(ids[1], None)], "", "alpha")
    keys = store.keys(job)
    assert store.r.ttl(keys.reviews) > 0
    assert store.reset_failed(job) == [ids[0]]
    assert store.r.ttl(keys.record) == -1  # the job runs again, kept
    assert store.r.ttl(keys.reviews) == -1, "decisions still expire with the old end"
    assert store.get(job).review()["approved"] == 1


def test_a_retried_jobs_new_outputs_make_its_review_incomplete_again(store, hooked):
    """A complete review, then a retry: the new output is undecided, the job no longer
    reviewed, and deciding it completes the review again (a new job.reviewed delivery)."""
    plan = hooked
    ids = sorted(r.id for r in plan.renders)
    job = made(store, plan, ended={ids[0]: "failed"})
    done = store.decide(job, "approved", [(i, None) for i in ids[1:]], "", "alpha")
    assert done.reviewed
    first = store.get(job).meta.get("review_webhook_delivery")
    store.reset_failed(job)
    claim = store.claim(job, ids[0], "W", LIVE, CAP)
    store.finish(Held(job, ids[0], claim.attempt), "done", seconds=1, device="cpu")
    assert store.begin_finalize(job, "t2", 60) == "ok" and store.end_job(job, "done", token="t2")
    info = store.get(job)
    assert info.review()["undecided"] == 1
    assert "reviewed" not in info.meta, "still marked reviewed with an undecided output"
    last = store.decide(job, "approved", [(ids[0], None)], "", "alpha")
    assert last.reviewed, "the review completing again is never said"
    again = store.get(job).meta.get("review_webhook_delivery")
    assert again and again != first  # a new delivery for the new complete review


def test_withdrawing_a_newer_versions_approval_gives_the_old_its_decision_back(
    store, plan, tmp_path
):
    """r approved; its re-render approved (r superseded, its decision kept); the re-render
    then rejected: r is approved again, and the job's approved export has it."""
    job = made(store, plan)
    parent = store.get(job)
    r = sorted(plan.renders, key=lambda x: x.id)[0]
    store.decide(job, "approved", [(r.id, None)], "", "alpha")
    overrides, _ = review.read_overrides({"style_weight": 4.0})
    document = review.rerender_document(parent, [r], overrides)
    child_plan = plan_job(write_manifest(tmp_path, document), local_settings(), "random")
    child = made(store, child_plan)
    pairs = review.lineage_pairs([r], child_plan.renders)
    store.set_lineage(child, [(c, f"{job} {p}") for p, c in pairs])
    c = child_plan.renders[0].id

    class App:
        def send_task(self, *a, **k):
            pass

    review.decide(store, App(), child, "approved", [(c, 0)], reviewer="alpha")
    assert store.reviews(job, [r.id])[r.id]["decision"] == "superseded"
    review.decide(store, App(), child, "rejected", [(c, 1)], "worse", "alpha")
    back = store.reviews(job, [r.id])[r.id]
    assert (back["decision"], back["version"]) == ("approved", 3) and "superseded_by" not in back
    entries = list(review.export_entries(store, store.get(job), {}))
    assert [e.row["render"] for e in entries] == [r.id]
    assert store.get(job).review()["approved"] == 1


def test_every_overrides_problem_is_named_at_once():
    """A focus out of range beside another problem: both named."""
    _, problems = review.read_overrides({"seed": -1, "focus": [2, 2]})
    assert {p["where"] for p in problems} == {"overrides.seed", "overrides.focus"}


def test_overrides_that_change_nothing_are_known(plan):
    """The very values a render was made with are no change (the re-render refuses them)."""
    r = plan.renders[0]
    same, _ = review.read_overrides({"style_weight": r.params["style_weight"], "seed": 0})
    assert not same.changes(r)
    more, _ = review.read_overrides({"style_weight": r.params["style_weight"] * 2})
    assert more.changes(r)


class Reviewers(RuleBasedStateMachine):
    """Several reviewers, each deciding on renders as of the version they last looked at.
    The invariant: a write is recorded exactly when its version is the current one, and is
    otherwise answered 'stale' with the decision that stands; the job's counts always equal
    its decisions; each render's version counts its recorded changes. Nothing is lost
    silently: every write's outcome is one of these, and checked."""

    store: JobStore
    job: str
    ids: list[str]

    @initialize()
    def start(self):
        self.seen: dict[tuple[int, str], int] = {}  # (reviewer, render) -> version seen
        self.model: dict[str, tuple[str, str, int]] = {}  # render -> (decision, note, version)

    @rule(who=st.integers(0, 2), i=st.integers(0, 3))
    def look(self, who, i):
        rid = self.ids[i]
        found = self.store.reviews(self.job, [rid]).get(rid)
        self.seen[(who, rid)] = found["version"] if found else 0

    @rule(
        who=st.integers(0, 2),
        i=st.integers(0, 3),
        decision=st.sampled_from(["approved", "rejected"]),
        note=st.sampled_from(["", "too dark"]),
        blind=st.booleans(),
    )
    def decide(self, who, i, decision, note, blind):
        rid = self.ids[i]
        seen = None if blind else self.seen.get((who, rid), 0)
        [answer] = self.store.decide(self.job, decision, [(rid, seen)], note, f"r{who}").results
        current = self.model.get(rid, ("", "", 0))
        if seen is not None and seen != current[2]:
            assert answer.outcome == "stale", (answer, current)
            assert answer.version == current[2]
            assert (answer.review or {}).get("decision", "") == current[0]
        elif current[:2] == (decision, note):
            assert answer.outcome == "unchanged"
        else:
            assert answer.outcome == "recorded" and answer.version == current[2] + 1
            self.model[rid] = (decision, note, answer.version)
            self.seen[(who, rid)] = answer.version

    @invariant()
    def counts_match(self):
        info = self.store.get(self.job)
        decided = [d for d, _, _ in self.model.values()]
        review_counts = info.review()
        assert review_counts["approved"] == decided.count("approved")
        assert review_counts["rejected"] == decided.count("rejected")
        assert review_counts["undecided"] == 4 - len(decided)
        stored = self.store.all_reviews(self.job)
        assert {r: (v["decision"], v["note"], v["version"]) for r, v in stored.items()} == (
            self.model
        )


def test_concurrent_reviewers_lose_nothing_silently(store, plan):
    job = made(store, plan)
    Reviewers.store, Reviewers.job = store, job
    Reviewers.ids = [r.id for r in plan.renders]

    class Fresh(Reviewers):
        @initialize()
        def start(self):
            store.r.delete(store.keys(job).reviews)
            for d in ("approved", "rejected", "superseded"):
                store.r.hdel(store.keys(job).record, f"review:{d}")
            super().start()

    test = Fresh.TestCase
    test.settings = settings(
        max_examples=60,
        stateful_step_count=25,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    test().runTest()
