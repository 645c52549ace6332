"""`stylebatch --help` and each command's: what the tool is, the commands a user starts with,
and options with no type tags (``<text>``). No Redis is reached: its URL is unreachable."""

from __future__ import annotations

import re

from tests.support.commands import run_cli_on


def test_help_says_what_the_tool_is_with_no_type_tags():
    top = run_cli_on("--help", url="redis://127.0.0.1:1/0").stdout
    assert "neural style transfer in bulk" in top
    for command in (
        "stylebatch run examples/demo.yaml",
        "stylebatch validate",
        "stylebatch submit",
    ):
        assert command in top
    for command in ("status", "jobs", "gc", "metrics", "submit", "run", "worker"):
        text = run_cli_on(command, "--help", url="redis://127.0.0.1:1/0").stdout
        options = [line for line in text.splitlines() if line.strip().startswith("-")]
        assert options and not [line for line in options if re.search(r"<\w+>", line)], text
