"""schemathesis against the real collector's /openapi.json: thousands of generated requests, no
5xx, every response as the document says (status, content type, body schema).

The operations' Hypothesis strategies are driven directly: schemathesis' own pytest plugin does
not load with this pytest. Every check runs but "schema-valid data is accepted": JSON Schema
cannot say "no NUL in any string at any depth" of the free-form event, and the collector rightly
answers such events 400 (the document says so).
"""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from tests.conftest import new_database
from tests.ingest_service.conftest import CollectorProcess

# Our own intake gets the most; the SDK protocols' endpoints (five, sharing that intake path
# after their own parsing) fewer each, so the test stays near a minute.
EXAMPLES_PER_OPERATION = {"GET /i": 1100, "POST /collect": 1100}
EXAMPLES_PER_SDK_OPERATION = 60
# PostHog's other capture paths run /e/'s handler (tests/ingest_service/test_sdks.py sends to them).
SHARED_HANDLER = {"POST /capture/", "POST /i/v0/e/",
                     # Jitsu's server-to-server path runs the browser path's handler.
                     "POST /api/s/s2s/{call}"}


@pytest.fixture(scope="module")
def collector(postgres_server, template_database):
    url = new_database(postgres_server, template_database)
    # Generated site ids are all new: admit them all, so a schema-valid event is accepted.
    process = CollectorProcess(url, env={"PIXELPIPE_NEW_SITES_PER_HOUR": "1000000"})
    yield process
    process.terminate()


@pytest.mark.slow
def test_generated_requests_get_no_5xx_and_answers_as_documented(collector):
    schema = schemathesis.openapi.from_url(f"{collector.url}/openapi.json")
    statuses: dict[str, list[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.label in SHARED_HANDLER:
            continue

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION.get(operation.label, EXAMPLES_PER_SDK_OPERATION),
                  deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
            statuses.setdefault(case.operation.label, []).append(response.status_code)

        run()
    calls = [status for per_operation in statuses.values() for status in per_operation]
    assert len(calls) >= 2000, {label: len(s) for label, s in statuses.items()}
    assert [status for status in calls if status >= 500] == []
