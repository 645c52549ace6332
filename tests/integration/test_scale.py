"""Job state at 100,000 renders: what status, jobs, retry and the workers' updates send to Redis
stays small. Checked with Redis's own SLOWLOG (nothing over 20 ms) and command counts; the
times are in bench/state_bench.py."""

from __future__ import annotations

import json

import pytest

from common.expand import plan_job
from common.state import Held, JobStore
from tests.support.big_jobs import big_job, calls
from tests.support.commands import run_cli_on
from tests.support.manifests import local_settings, tiny_manifest, write_manifest

SLOW_US = 20_000


@pytest.fixture
def store(redis_db):
    s = JobStore.from_url(redis_db)
    yield s, redis_db
    s.r.flushdb()
    s.r.config_set("slowlog-log-slower-than", 10_000)


def test_status_jobs_retry_and_updates_stay_fast_on_100k_renders(store, tmp_path, images):
    s, url = store
    plan = plan_job(
        write_manifest(tmp_path, tiny_manifest(images, tmp_path / "o")), local_settings()
    )
    small, big = big_job(plan, 100), big_job(plan, 100_000)
    for p in (small, big):
        assert s.create(p)
        s.mark_sent(p.job_id)
        for render in p.renders[:40]:  # a worker's updates: claims, then ends, some failures
            claim = s.claim(p.job_id, render.id, "node|h|1|t", 60, 3)
            assert claim.outcome == "claimed"
            status = "failed" if int(render.id, 16) % 2 else "done"
            held = Held(p.job_id, render.id, claim.attempt)
            s.finish(held, status, error="bad input" if status == "failed" else None)
    s.r.config_set("slowlog-log-slower-than", SLOW_US)
    s.r.slowlog_reset()

    cost = {}
    for p in (small, big):
        before = calls(s.r)
        result = run_cli_on("status", p.job_id, "--json", url=url)
        cost[p.job_id] = calls(s.r) - before
        assert result.returncode == 1, result.stderr  # renders failed
        record = json.loads(result.stdout)
        assert record["failed"] == 20 and len(record["failures"]) == 20
        assert record["failures"][0]["error"] == "bad input"
    assert cost[small.job_id] == cost[big.job_id]  # a refresh costs the same at any size

    result = run_cli_on("jobs", "--json", "--limit", "1", url=url)
    assert result.returncode == 0, result.stderr
    assert [j["job"] for j in json.loads(result.stdout)] == [big.job_id]
    for render in big.renders[40:60]:  # more worker updates while the job is that big
        claim = s.claim(big.job_id, render.id, "node|h|2|t", 60, 3)
        s.finish(Held(big.job_id, render.id, claim.attempt), "done", seconds=1.0)
    assert len(s.reset_failed(big.job_id)) == 20  # reads the failed set, not the job
    assert s.failed(big.job_id) == []
    assert len(s.summary(small.job_id).renders) == 100

    slow = s.r.slowlog_get(128)
    assert slow == [], [(e["duration"], e["command"][:80]) for e in slow]
