"""Least privilege in the object store, as a table: each component's own user, and what it
needs, written from what its code does (not from the policy files, deploy/minio/*.json). The
policy files are checked against it alone (tests/unit/test_policy_files.py) and on a real,
policy-enforcing SeaweedFS (tests/integration/test_policies.py)."""

from __future__ import annotations

import fnmatch
import json

from scheduler.preflight import PROBE_KEY
from tests.support.paths import ROOT

DEPLOY = ROOT / "deploy"
INIT = DEPLOY / "smoke" / "s3_init.py"

INPUTS, OUTPUTS = "stylebatch-inputs", "stylebatch-outputs"
MANIFESTS, MODELS = "stylebatch-manifests", "stylebatch-models"
BUCKETS = (INPUTS, OUTPUTS, MANIFESTS, MODELS)
PLAIN, PROBE = "jobs/j1/out.png", f"jobs/j1/{PROBE_KEY}"  # an output; the preflight's probe
SEED = b"seeded by the admin"

# Each component's own user (secrets with the characters real ones have).
USERS = {
    "worker": ("WORKERTESTKEY1", "worker+secret/1"),
    "scheduler": ("SCHEDULERTESTKEY1", "scheduler+secret/1"),
    "bookkeeping": ("BOOKKEEPINGTESTKEY1", "bookkeeping+secret/1"),
    "web": ("WEBTESTKEY1", "web+secret/1"),
}

# What each component needs, written from what its code does, not from the policy files: action
# -> a bucket (any key in it) or "bucket/pattern" (only keys matching it). Every other pair of
# (component, action, bucket, key) below is a deny.
NEEDS: dict[str, dict[str, set[str]]] = {
    "worker": {  # reads inputs and weights; HEADs the output bucket and outputs, writes them
        "s3:ListBucket": {INPUTS, OUTPUTS},
        "s3:GetBucketLocation": {INPUTS, OUTPUTS},
        "s3:GetObject": {INPUTS, MODELS, OUTPUTS},
        "s3:PutObject": {OUTPUTS},
    },
    "scheduler": {  # beat: lists and reads manifests, checks inputs and weights, probes outputs
        "s3:ListBucket": {MANIFESTS, INPUTS, OUTPUTS},
        "s3:GetBucketLocation": {MANIFESTS, INPUTS, OUTPUTS},
        "s3:GetObject": {MANIFESTS, INPUTS, MODELS},
        "s3:PutObject": {f"{OUTPUTS}/*{PROBE_KEY}"},
        "s3:DeleteObject": {f"{OUTPUTS}/*{PROBE_KEY}"},
    },
    "web": {  # the web front: submits as beat does, and reads outputs for its thumbnails
        "s3:ListBucket": {MANIFESTS, INPUTS, OUTPUTS},
        "s3:GetBucketLocation": {MANIFESTS, INPUTS, OUTPUTS},
        "s3:GetObject": {MANIFESTS, INPUTS, MODELS, OUTPUTS},
        "s3:PutObject": {f"{OUTPUTS}/*{PROBE_KEY}"},
        "s3:DeleteObject": {f"{OUTPUTS}/*{PROBE_KEY}"},
    },
    "bookkeeping": {  # summaries and contact sheets: the outputs, with their inputs' thumbnails
        "s3:ListBucket": {OUTPUTS},
        "s3:GetBucketLocation": {OUTPUTS},
        "s3:GetObject": {OUTPUTS, INPUTS},
        "s3:PutObject": {OUTPUTS},
    },
}
BUCKET_ACTIONS = ("s3:ListBucket", "s3:GetBucketLocation")
OBJECT_ACTIONS = ("s3:GetObject", "s3:PutObject", "s3:DeleteObject")
CASES = [(c, a, b, None) for c in NEEDS for a in BUCKET_ACTIONS for b in BUCKETS] + [
    (c, a, b, k) for c in NEEDS for a in OBJECT_ACTIONS for b in BUCKETS for k in (PLAIN, PROBE)
]


def expected(component: str, action: str, bucket: str, key: str | None) -> bool:
    for where in NEEDS[component].get(action, ()):
        name, _, pattern = where.partition("/")
        if name == bucket and (key is None or fnmatch.fnmatchcase(key, pattern or "*")):
            return True
    return False


def arn(bucket: str, key: str | None) -> str:
    return f"arn:aws:s3:::{bucket}" + (f"/{key}" if key is not None else "")


def policy_files() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((DEPLOY / "minio").glob("*.json"))}


def listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value
