"""The fleet's teams: who may use the web front, what each may read and write, and the
secrets that sign each team's webhooks. Read by `stylebatch serve` and by the bookkeeping
worker (which signs the webhooks), so it lives in the shared core.

``STYLEBATCH_WEB_TEAMS`` is a file (JSON or YAML) or inline JSON mapping a team's name to::

    {"token_sha256": "<hex SHA-256 of the token>"   # or "token_file": "/run/secrets/team-a"
     "allowed_inputs": ["s3://inputs/team-a"],
     "allowed_outputs": ["s3://outputs/team-a"],
     "webhook_secret_file": "/run/secrets/team-a-webhook",           # or "webhook_secret"
     "webhook_secret_previous_file": "/run/secrets/team-a-webhook-old"}  # during a rotation

Tokens and secrets come from the settings only, never from manifests; only the tokens'
hashes need be in the mapping. A team's prefixes narrow the fleet's
(``STYLEBATCH_ALLOWED_INPUTS`` / ``_OUTPUTS``): each must lie within one of them, or the
server does not start; a local path among them is what lets a team name files on the
server's disk at all. A token is checked against every team's hash in constant time (no
early exit, ``hmac.compare_digest``). A team's webhooks are signed with its own secret (and,
during a rotation, its previous one too), never another team's or the fleet's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.access import under
from common.errors import ConfigError
from common.settings import Settings
from common.state import JobInfo

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
SETTING = "STYLEBATCH_WEB_TEAMS"


@dataclass(frozen=True)
class Team:
    name: str
    token_sha256: str
    allowed_inputs: tuple[str, ...]
    allowed_outputs: tuple[str, ...]
    # the current secret first, then the previous one while a rotation lasts
    webhook_secrets: tuple[str, ...] = field(default=(), repr=False)

    def settings(self, fleet: Settings) -> Settings:
        """The fleet's settings, narrowed to this team's prefixes: what its manifests are
        validated, confined and preflighted with."""
        return dataclasses.replace(
            fleet, allowed_inputs=self.allowed_inputs, allowed_outputs=self.allowed_outputs
        )

    def owns(self, info: JobInfo | None) -> bool:
        return info is not None and info.meta.get("team") == self.name


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def authenticate(teams: dict[str, Team], token: str | None) -> Team | None:
    """The team whose token this is, or None; compares with every team, in constant time."""
    if not token:
        return None
    given = digest(token)
    found = None
    for team in teams.values():
        if hmac.compare_digest(given, team.token_sha256):
            found = team
    return found


def _read_spec(spec: str) -> Any:
    if spec.lstrip().startswith("{"):
        return json.loads(spec)
    path = Path(spec)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{SETTING}: cannot read {path}: {exc}") from None
    return yaml.safe_load(text)


def _prefixes(name: str, entry: dict, which: str, fleet: tuple[str, ...]) -> tuple[str, ...]:
    raw = entry.get(which)
    if not isinstance(raw, list) or not raw or not all(isinstance(p, str) and p for p in raw):
        raise ConfigError(f"{SETTING}: team {name!r}: {which} must be a non-empty list of prefixes")
    for prefix in raw:
        if not any(under(prefix, allowed) for allowed in fleet):
            raise ConfigError(
                f"{SETTING}: team {name!r}: {which} {prefix!r} is not within the fleet's own "
                f"({','.join(fleet)})"
            )
    return tuple(raw)


def load_teams(spec: str, fleet: Settings) -> dict[str, Team]:
    """The teams of ``STYLEBATCH_WEB_TEAMS``; ConfigError naming what is wrong."""
    if not spec:
        return {}
    try:
        data = _read_spec(spec)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{SETTING}: not JSON or YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{SETTING}: must map team names to their settings")
    teams: dict[str, Team] = {}
    for name, entry in data.items():
        if not isinstance(name, str) or not NAME.match(name):
            raise ConfigError(f"{SETTING}: team name {name!r}: use a-z, 0-9, '-' and '_'")
        if not isinstance(entry, dict):
            raise ConfigError(f"{SETTING}: team {name!r}: must be a mapping")
        if entry.get("token_file"):
            try:
                token = Path(entry["token_file"]).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"{SETTING}: team {name!r}: token_file: {exc}") from None
            if len(token) < 16:
                raise ConfigError(f"{SETTING}: team {name!r}: token shorter than 16 characters")
            hashed = digest(token)
        else:
            hashed = str(entry.get("token_sha256", "")).lower()
            if not re.fullmatch(r"[0-9a-f]{64}", hashed):
                raise ConfigError(
                    f"{SETTING}: team {name!r}: needs token_sha256 (64 hex digits) or token_file"
                )
        if any(t.token_sha256 == hashed for t in teams.values()):
            raise ConfigError(f"{SETTING}: team {name!r}: its token is another team's")
        secrets = tuple(
            s
            for s in (_secret(name, entry, "webhook_secret"),
                      _secret(name, entry, "webhook_secret_previous"))
            if s
        )  # fmt: skip
        if secrets and not _secret(name, entry, "webhook_secret"):
            raise ConfigError(
                f"{SETTING}: team {name!r}: a previous webhook secret without a current one"
            )
        if any(s in other.webhook_secrets for s in secrets for other in teams.values()):
            raise ConfigError(f"{SETTING}: team {name!r}: its webhook secret is another team's")
        teams[name] = Team(
            name,
            hashed,
            _prefixes(name, entry, "allowed_inputs", fleet.allowed_inputs),
            _prefixes(name, entry, "allowed_outputs", fleet.allowed_outputs),
            secrets,
        )
    return teams


def _secret(name: str, entry: dict, which: str) -> str:
    """A webhook secret, inline or from a file (``<which>_file``); '' where none is set."""
    if entry.get(f"{which}_file"):
        try:
            value = Path(entry[f"{which}_file"]).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{SETTING}: team {name!r}: {which}_file: {exc}") from None
    else:
        value = str(entry.get(which) or "").strip()
    if value and len(value) < 16:
        raise ConfigError(f"{SETTING}: team {name!r}: {which} shorter than 16 characters")
    return value
