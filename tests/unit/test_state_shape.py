"""The state package's shape, held by its code (issue 28): one key schema, every key reaching
Lua through KEYS, one hash tag per job, the plain writes listed with their reasons, reads over
the read-only client, and no module too long to read whole."""

from __future__ import annotations

import ast
import re

from common import state
from common.state.keys import JobKeys
from tests.support.paths import ROOT

LUA = ROOT / "common" / "lua"
WRITE_COMMANDS = {
    "set", "setnx", "setex", "psetex", "delete", "unlink", "hset", "hdel", "hincrby",
    "hincrbyfloat", "zadd", "zrem", "zremrangebyscore", "sadd", "srem", "expire", "pexpire",
    "persist", "rename", "renamenx", "incr", "incrby", "lpush", "rpush", "flushdb",
}  # fmt: skip


def test_no_script_builds_a_key_name():
    for path in sorted(LUA.glob("*.lua")):
        text = "\n".join(
            line.split("--", 1)[0] for line in path.read_text().splitlines()
        )  # code, not comments
        assert "sb:" not in text, path.name
        assert not re.search(r"redis\.call\('\w+', '", text), path.name  # a literal key
        assert not re.search(r"\.\. ':[a-z_]+'", text), path.name  # a key's name made up
        assert "string.sub(KEYS" not in text, path.name


def test_a_jobs_keys_share_one_hash_tag():
    job = JobKeys("autumn-0123456789ab")
    tagged = [*job.all(), *job.staging("x"), job.built("index:y")]
    assert all("{autumn-0123456789ab}" in key for key in tagged), tagged
    assert len(set(tagged)) == len(tagged)


def _functions(tree: ast.Module):
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            yield node


def test_every_plain_write_is_listed_with_its_reason():
    """A write command called outside a script is in a function PLAIN_WRITES names (or the
    schema upgrade, which runs once); every listed reason is said."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "common" / "state").glob("*.py")):
        if path.name == "upgrade.py":
            continue
        for fn in _functions(ast.parse(path.read_text())):
            for node in ast.walk(fn):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in WRITE_COMMANDS
                ):
                    found.setdefault(fn.name, set()).add(node.func.attr)
    unlisted = {
        name: cmds
        for name, cmds in found.items()
        if name not in state.PLAIN_WRITES and name not in ("add", "_drop_staging")
    }
    assert unlisted == {}, unlisted
    assert all(len(reason) > 10 for reason in state.PLAIN_WRITES.values())


def test_the_queries_read_only_through_the_read_only_client():
    tree = ast.parse((ROOT / "common" / "state" / "reads.py").read_text())
    for fn in _functions(tree):
        for node in ast.walk(fn):
            if isinstance(node, ast.Attribute) and node.attr == "r":
                raise AssertionError(f"reads.py's {fn.name} reaches the writing client")


def test_no_module_is_too_long_to_read_whole():
    long = [
        f"{path.relative_to(ROOT)}: {n}"
        for package in ("common", "scheduler", "workers")
        for path in sorted((ROOT / package).rglob("*.py"))
        if (n := len(path.read_text().splitlines())) > 600
    ]
    assert long == [], long
