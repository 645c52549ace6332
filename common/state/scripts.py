"""The Lua scripts, one file per operation in ``common/lua/`` (each opening with the
transitions it allows and the KEYS it takes), each with the shared prelude, and how they run:
once, or durably (held by replicas before the caller acts on it)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from common.state.model import RENDER_SECONDS_BUCKETS

LUA = Path(__file__).resolve().parents[1] / "lua"
WAIT_MS = 2000  # how long a durable transition waits for its replicas


@cache
def script_source(name: str) -> str:
    """One operation's script, with the shared prelude."""
    body = (LUA / f"{name}.lua").read_text()
    body = body.replace("__BUCKETS__", ", ".join(map(str, RENDER_SECONDS_BUCKETS)))
    return (LUA / "prelude.lua").read_text() + "\n" + body


SCRIPTS = tuple(sorted(p.stem for p in LUA.glob("*.lua") if p.stem != "prelude"))


class NotDurable(Exception):
    """A transition whose effect would leave the system was not held by a replica in time:
    it is recorded on the primary, but must not be acted on yet (a failover now could lose
    it). The caller tries again later; the transition itself is idempotent."""


class Scripts:
    """The registered scripts of one client."""

    def __init__(self, client: Any, replicas: int = 0):
        self.client, self.replicas = client, replicas
        self.loaded = {name: client.register_script(script_source(name)) for name in SCRIPTS}

    def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return self.loaded[name](keys=keys, args=args)

    def run_durably(self, name: str, keys: list[str], args: list[Any]) -> tuple[Any, bool]:
        """Run a script, then WAIT (on the same connection) until ``replicas`` replicas hold
        its writes, for at most WAIT_MS: (result, whether they do). Without replicas to wait
        for: always held."""
        if self.replicas <= 0:
            return self.run(name, keys, args), True
        pipe = self.client.pipeline(transaction=False)
        self.loaded[name](keys=keys, args=args, client=pipe)
        pipe.wait(self.replicas, WAIT_MS)
        result, acked = pipe.execute()
        return result, int(acked) >= self.replicas
