"""The object-store policy files (deploy/minio/*.json) and the init scripts that apply them,
read alone: compose's minio-init and deploy/smoke/s3_init.py apply the same files, Flower holds
no object-store keys, and every grant is one the table (tests/support/s3_policies.py) needs.
Every allow and deny on a real server: tests/integration/test_policies.py."""

from __future__ import annotations

import fnmatch
import re

import yaml

from tests.support.s3_policies import (
    CASES,
    DEPLOY,
    INIT,
    USERS,
    arn,
    expected,
    listed,
    policy_files,
)


def test_production_init_and_s3_init_apply_the_same_policy_files():
    """compose's minio-init makes one user per deploy/minio/NAME.json (mounted at /policies),
    from NAME_S3_KEY/_SECRET; s3_init.py reads every file there and the same variables."""
    init = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]["minio-init"]
    command = " ".join(init["command"])
    users = dict(re.findall(r"(\w+):\$\$\{(\w+)_S3_KEY[^}]*\}:\$\$\{\2_S3_SECRET[^}]*\}", command))
    assert set(users) == set(policy_files()) == set(USERS)
    assert all(users[name] == name.upper() for name in users)
    assert "/policies/$$name.json" in command and "./minio:/policies:ro" in init["volumes"]
    assert {f"{n.upper()}_S3_{s}" for n in users for s in ("KEY", "SECRET")} <= set(
        init["environment"]
    )
    text = INIT.read_text()
    assert '"minio"' in text and 'glob("*.json")' in text and '_S3_KEY"' in text


def test_flower_holds_no_object_store_credentials():
    """tests/unit/test_deploy_files.py checks Flower has no AWS_ACCESS_KEY_ID in compose,
    tests/deploy/test_k8s.py that its only Secret has none; here: no AWS_* setting at all in its
    compose environment."""
    services = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    assert services["flower"]["environment"]  # the merged anchor: there is something to check
    assert not [k for k in services["flower"]["environment"] if k.upper().startswith("AWS")]
    assert any(k.startswith("AWS_") for k in services["beat"]["environment"])


def test_every_grant_in_the_policy_files_is_exercised_by_an_allowed_case():
    """A grant that no allowed case of the table uses fails here: a new action, another bucket
    or a wider pattern must be added to NEEDS, where the server checks it, or removed."""
    for name, policy in policy_files().items():
        for statement in policy["Statement"]:
            assert set(statement) <= {"Sid", "Effect", "Action", "Resource"}, (name, statement)
            assert statement["Effect"] == "Allow", (name, statement)
            for action in listed(statement["Action"]):
                for resource in listed(statement["Resource"]):
                    used = [
                        case
                        for case in CASES
                        if case[:2] == (name, action)
                        and expected(*case)
                        and fnmatch.fnmatchcase(arn(*case[2:]), resource)
                    ]
                    assert used, f"{name}.json grants {action} on {resource}: no case uses it"
