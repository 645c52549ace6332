"""Jobs of up to 100,000 renders made up from a small plan (as submit would store them), and
how many commands Redis has run, so that a test can show a read costs the same at any size."""

from __future__ import annotations

import dataclasses


def big_job(plan, n: int):
    """The plan with ``n`` distinct renders (ids and keys made up, as submit would store)."""
    first = plan.renders[0]
    renders = [
        dataclasses.replace(first, id=f"{i:024x}", key=f"big/{i}.png", size=48 + i % 7)
        for i in range(n)
    ]
    return dataclasses.replace(plan, job_id=f"big-{n}", renders=renders)


def calls(r) -> int:
    """Commands Redis has run so far (SLOWLOG's own left out)."""
    return sum(v["calls"] for k, v in r.info("commandstats").items() if "slowlog" not in k)
