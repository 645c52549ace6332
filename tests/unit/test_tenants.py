"""Two teams on one fleet (issue 26), the parts that need no service: what a team is told is
redacted to its own prefixes, and a number too long is named, not a crash. With S3, Redis and
the server: tests/integration/test_tenants.py; copies of a shared render:
tests/engine/test_tenants.py."""

from __future__ import annotations

import pytest

from scheduler.intake import redact


def test_redaction_keeps_the_teams_own_and_hides_the_rest():
    prefixes = ("s3://ins/team-a", "/data/team-a")
    said = redact(
        "a s3://ins/team-a/x.png b s3://ins/team-b/y.png c /data/team-a/z.png d /data/team-b "
        "e /etc/passwd f https://hooks.example/team-b/x g s3://ins h /data.",
        prefixes,
    )
    assert "s3://ins/team-a/x.png" in said and "/data/team-a/z.png" in said
    assert "team-b/y.png" not in said and "/data/team-b" not in said and "/etc" not in said
    assert "https://hooks.example/team-b/x" in said  # a URL's path is no file path
    assert "s3://ins " in said and "/data." in said  # folders holding the team's own


def test_a_number_too_long_is_a_422_naming_it_not_a_500(tmp_path):
    from common.errors import ManifestError
    from common.manifest import read_document

    digits = "9" * 5000
    for text, as_json in (
        (f'{{"name": "x", "priority": {digits}}}', True),
        (f"name: x\npriority: {digits}\n", False),
        (f"name: x\nparams: {{seed: {'9' * 40}}}\n", False),
        ('{"name": "x", "params": {"lr": 1e999}}', True),
    ):
        with pytest.raises(ManifestError) as info:
            read_document(text, "body", as_json)
        said = str(info.value)
        assert "number" in said or "digits" in said or "finite" in said, said
        assert digits not in said
    path = tmp_path / "m.json"
    path.write_text(f'{{"name": "x", "priority": {digits}}}')
    from tests.support.commands import run_cli

    answer = run_cli("validate", "--offline", str(path))
    assert answer.returncode == 2 and "Traceback" not in answer.stderr, answer.stderr
