"""Property-based fuzzing of every operation of both services from their own OpenAPI descriptions.

schemathesis generates requests that fit each description (and, in negative mode, requests that break it:
wrong types, out-of-range values, missing fields, random bytes as the image) and sends them to the real apps.
For every answer: no 500, no other 5xx the description does not list, a status the description lists, and
every 4xx is JSON with an `error` message that says what is wrong; no request takes more than 5 s (no hang).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import schemathesis
import yaml
from flask import Flask
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import content_type_conformance, status_code_conformance

from tests.api.conftest import TOKEN

ROOT = Path(__file__).resolve().parents[2]
MAX_EXAMPLES = 25
MAX_SECONDS_PER_REQUEST = 5.0
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def _schema(spec: Path) -> Any:
    """Load a service's description from its file; each test points it at the app it fuzzes."""
    schema = schemathesis.openapi.from_dict(yaml.safe_load(spec.read_text()))
    schema.config.update(base_url=schema.raw_schema["servers"][0]["url"])  # only the path reaches the WSGI app
    schema.config.generation.update(modes=["positive", "negative"], max_examples=MAX_EXAMPLES, database="none")
    return schema


generator_api = _schema(ROOT / "generator" / "openapi.yaml")
monitor_api = _schema(ROOT / "monitor" / "web" / "openapi.yaml")


def errors_say_what_is_wrong(ctx: Any, response: Any, case: Any) -> bool | None:
    """Fail on a 500, on an undocumented 5xx, and on a 4xx that is not JSON with an error message."""
    documented = set(case.operation.definition.raw.get("responses", {}))
    status = response.status_code
    if status == 500 or (status >= 500 and str(status) not in documented):
        raise AssertionError(f"{status} from {case.method} {case.formatted_path}: {response.text[:300]}")
    if 400 <= status < 500:
        try:
            body = response.json()
        except ValueError:
            raise AssertionError(f"{status} is not JSON: {response.text[:200]!r}") from None
        message = body.get("error") if isinstance(body, dict) else None
        if not isinstance(message, str) or len(message) < 10:
            raise AssertionError(f"{status} has no error message that says what is wrong: {body!r}")
    return None


def fuzz(case: Any, app: Flask) -> None:
    """Send one generated request to the app (in process, through WSGI) and check its answer."""
    started = time.monotonic()
    response = case.call(app=app, headers=HEADERS)
    elapsed = time.monotonic() - started
    assert elapsed < MAX_SECONDS_PER_REQUEST, f"{case.method} {case.formatted_path} took {elapsed:.1f} s"
    case.validate_response(
        response, checks=[status_code_conformance, content_type_conformance, errors_say_what_is_wrong]
    )


FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@generator_api.parametrize()
@FUZZ_SETTINGS
def test_fuzz_the_generator(case: Any, generator_app: Flask) -> None:
    fuzz(case, generator_app)


@monitor_api.parametrize()
@FUZZ_SETTINGS
def test_fuzz_the_monitor(case: Any, monitor_app: Flask) -> None:
    fuzz(case, monitor_app)
