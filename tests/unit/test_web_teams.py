"""Teams of the web front (common/teams.py): each lies within the fleet's prefixes, names a
token's hash or a file holding the token, and is found by its token alone."""

from __future__ import annotations

import json

import pytest
import yaml

from common.errors import ConfigError
from common.settings import Settings
from common.teams import load_teams


def test_teams_must_lie_within_the_fleets_prefixes(tmp_path):
    fleet = Settings(allowed_inputs=("s3://inputs",), allowed_outputs=("s3://outputs",))
    good = {"token_sha256": "a" * 64, "allowed_inputs": ["s3://inputs/a"]}
    with pytest.raises(ConfigError, match=r"'s3://outputs-evil/a' is not within"):
        load_teams(json.dumps({"a": {**good, "allowed_outputs": ["s3://outputs-evil/a"]}}), fleet)
    with pytest.raises(ConfigError, match="token_sha256"):
        load_teams(json.dumps({"a": {"allowed_outputs": ["s3://outputs/a"]}}), fleet)
    token = tmp_path / "token"
    token.write_text("a-token-from-a-mounted-secret\n")
    spec = tmp_path / "teams.yaml"
    entry = {"token_file": str(token), "allowed_inputs": ["s3://inputs"]}
    spec.write_text(yaml.safe_dump({"a": {**entry, "allowed_outputs": ["s3://outputs/a"]}}))
    teams = load_teams(str(spec), fleet)
    from common.teams import authenticate

    assert authenticate(teams, "a-token-from-a-mounted-secret").name == "a"
    assert authenticate(teams, "a-token-from-a-mounted-secreT") is None
