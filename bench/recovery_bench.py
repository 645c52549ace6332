"""Benchmark (not a test): recovery times as an operator meets them, at DEFAULT settings
(STYLEBATCH_WORKER_TIMEOUT 60 s, watchdog every 15 s, stall_after 300 s).

    python bench/recovery_bench.py

Starts Redis, SeaweedFS and `stylebatch worker`-style processes (2 CPU render workers and a
bookkeeping worker) on loopback, then times:
- node loss: every worker process SIGKILLed mid-job, restarted 5 s later; seconds from the
  restart until the job is done, and the renders' own time for comparison;
- a mistyped output bucket, a missing style object and unreadable weights refused at submit;
- an orphaned job (submit died before sending its tasks) recovered by a resubmit;
- CPU workers at default time limits: a 128 px draft render and the README demo (256 px
  draft, two styles of the full-size example images) through the fleet.
Writes bench/results/recovery-2core.json.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from common.expand import plan_job  # noqa: E402
from common.settings import Settings  # noqa: E402
from tests.support.fleet import manifest, start_fleet, upload_inputs  # noqa: E402
from tests.support.paths import EXAMPLES  # noqa: E402
from tests.support.services import RedisServer, S3Server, wait_for  # noqa: E402
from workers.engine import random_state_dict  # noqa: E402

DEFAULTS = ("STYLEBATCH_WORKER_TIMEOUT", "STYLEBATCH_HEARTBEAT_INTERVAL",
            "STYLEBATCH_WATCHDOG_INTERVAL", "STYLEBATCH_STALL_AFTER",
            "STYLEBATCH_MAX_TIME_LIMIT")  # fmt: skip


def images(folder: Path) -> dict[str, Path]:
    from PIL import Image

    out = {}
    for name in ("tubingen", "starry_night", "wave", "shipwreck"):
        img = Image.open(EXAMPLES / f"{name}.jpg").convert("RGB")
        img.thumbnail((64, 64))
        out[name] = folder / f"{name}.png"
        img.save(out[name])
    return out


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="sb-recovery-"))
    weights = folder / "vgg19-bench.pth"
    torch.save(random_state_dict(1234), weights)
    redis = RedisServer(folder, appendonly=True)
    s3 = S3Server(folder)
    results: dict = {"machine": "2 CPU cores, no GPU", "settings": "defaults"}
    try:
        upload_inputs(s3, images(folder))
        fleet = start_fleet(folder, redis, s3, weights, redis.url(0))  # no workers yet
        for name in DEFAULTS:  # the operator's defaults, not the tests' short ones
            fleet.env.pop(name)
        fleet.start(["cpu0", "cpu1", "bookkeeping"])
        contents = ["tubingen", "shipwreck", "starry_night", "wave", "gradient"]

        # the renders' own time, undisturbed
        started = time.monotonic()
        calm = fleet.submit(manifest(folder / "calm", "calm", contents, ["wave", "tubingen"]))
        fleet.wait_done(calm, 600)
        results["job_undisturbed_s"] = round(time.monotonic() - started, 1)

        job = fleet.submit(manifest(folder / "loss", "loss", contents, ["wave", "shipwreck"]))
        wait_for(lambda: fleet.store.get(job).running >= 1, 120, "running")
        for worker in fleet.workers.values():
            worker.kill()
        time.sleep(5)
        restarted = time.monotonic()
        fleet.start(["cpu0", "cpu1", "bookkeeping"])
        fleet.wait_done(job, 600)
        info = fleet.store.get(job)
        results["node_loss"] = {
            "done_after_restart_s": round(time.monotonic() - restarted, 1),
            "renders": info.total,
            "done": info.count("done"),
            "skipped": info.count("skipped"),
            "failed": info.count("failed"),
            "crashes": fleet.store.crashes(job),
        }
        print("node loss:", results["node_loss"])

        bad = manifest(folder / "bad", "bad", ["wave"], ["tubingen"])
        text = bad.read_text().replace("s3://outputs/bad", "s3://sb-rendres/bad")
        bad.write_text(text.replace("img/tubingen.png", "img/starry_nite.png") +
                       "weights: /models/vgg19.pth\n")  # fmt: skip
        started = time.monotonic()
        refused = fleet.cli("submit", str(bad))
        results["bad_submit"] = {
            "seconds": round(time.monotonic() - started, 2),
            "exit": refused.returncode,
            "stderr": refused.stderr.strip().splitlines(),
        }
        print("bad submit:", results["bad_submit"])

        with _env(fleet.env):
            settings = Settings.from_env()
        orphan = plan_job(manifest(folder / "orphan", "orphan", ["tubingen"], ["wave"]), settings)
        fleet.store.create(orphan)  # recorded, never sent: a submit that died
        started = time.monotonic()
        again = fleet.cli("submit", orphan.source)
        fleet.wait_done(orphan.job_id, 300)
        results["orphan_resubmit"] = {
            "done_s": round(time.monotonic() - started, 1),
            "stdout": again.stdout.strip().splitlines()[0],
        }
        print("orphan:", results["orphan_resubmit"])
        s3_client = s3.client()
        for name in ("tubingen", "starry_night", "wave"):
            s3_client.upload_file(str(EXAMPLES / f"{name}.jpg"), "inputs", f"full/{name}.jpg")
        cpu: dict = {}
        for label, size, styles in (("draft_128", 128, ["wave"]),
                                    ("demo_256", 256, ["starry_night", "wave"])):  # fmt: skip
            path = manifest(folder / label, label, [], styles, sizes=(size,))
            text = path.read_text().replace("img/", "full/").replace(".png", ".jpg")
            path.write_text(text.replace("content: []", "content: [s3://inputs/full/tubingen.jpg]"))
            data = __import__("yaml").safe_load(path.read_text())
            data["params"] = {"preset": "draft", "sizes": [size], "seed": 7}
            path.write_text(__import__("yaml").safe_dump(data))
            started = time.monotonic()
            job_id = fleet.submit(path)
            fleet.wait_done(job_id, 1800)
            info = fleet.store.get(job_id)
            states = list(fleet.store.states(job_id).values())
            cpu[label] = {
                "seconds": round(time.monotonic() - started, 1),
                "done": info.count("done"),
                "failed": info.count("failed"),
                "errors": [s.get("error") for s in states if s.get("error")],
            }
            print(label, cpu[label])
        results["cpu_default_limits"] = cpu
        fleet.stop()
    finally:
        s3.stop()
        redis.stop()
    out = ROOT / "bench" / "results" / "recovery-2core.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


class _env:
    def __init__(self, env: dict[str, str]):
        self.env, self.saved = env, dict(os.environ)

    def __enter__(self):
        os.environ.update(self.env)

    def __exit__(self, *_):
        os.environ.clear()
        os.environ.update(self.saved)


if __name__ == "__main__":
    main()
