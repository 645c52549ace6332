"""The web API fuzzed against its own OpenAPI document (schemathesis): no input gets a 500,
and every answer is one the document declares: its status, its content type, its headers
and its body's schema. Real Redis and S3 behind it (no workers: what is submitted stays
pending), with a valid team token on every call so that the fuzzing reaches past
authentication."""

from __future__ import annotations

import os
from unittest import mock

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from tests.support.web import bearer, web_settings


@pytest.fixture(scope="module")
def web_app(tmp_path_factory, fleet_factory):
    from scheduler.web.app import create_app

    fleet = fleet_factory()  # its settings and store: no workers
    with mock.patch.dict(os.environ, fleet.settings_env()):
        yield create_app(web_settings(fleet.settings(), tmp_path_factory.mktemp("fuzzweb")))
    fleet.store.r.flushdb()


EXAMPLES = 40  # per operation


CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]


def test_no_input_gets_a_server_error_or_an_undeclared_answer(web_app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", web_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {"POST /v1/jobs", "GET /v1/jobs/{job_id}/renders"} <= {o.label for o in operations}
    errors: list[str] = []
    seen: set[tuple[str, int]] = set()
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case) -> None:
            response = case.call(headers=bearer("alpha"))
            seen.add((case.operation.label, response.status_code))
            try:
                case.validate_response(response, checks=CHECKS)
            except Exception as exc:  # every failed check, with the case that made it
                what = f"{case.operation.label} {case.path_parameters} {case.query}"
                errors.append(f"{what}: {response.status_code} {str(exc)[:400]}")

        fuzz()
    assert errors == [], "\n".join(errors[:20])
    assert ("GET /v1/jobs", 200) in seen and ("POST /v1/jobs", 422) in seen, sorted(seen)
