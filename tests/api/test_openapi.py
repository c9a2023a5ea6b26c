"""Each service's /openapi.json describes exactly its routes: a route added without its description fails here."""

from __future__ import annotations

import re

import pytest
from flask import Flask

IGNORED_METHODS = {"HEAD", "OPTIONS"}


def routes(app: Flask) -> set[tuple[str, str]]:
    """Return (OpenAPI path, method) for every rule of the app's url_map."""
    out = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        out |= {(path, method.lower()) for method in (rule.methods or set()) - IGNORED_METHODS}
    return out


def described(spec: dict) -> set[tuple[str, str]]:
    """Return (path, method) for every operation of the description."""
    return {(path, method) for path, item in spec["paths"].items() for method in item if method != "parameters"}


@pytest.mark.parametrize("app_name", ["generator_app", "monitor_app"])
def test_openapi_json_describes_every_route_and_no_other(app_name: str, request: pytest.FixtureRequest) -> None:
    app: Flask = request.getfixturevalue(app_name)
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    spec = response.get_json()
    assert spec["openapi"].startswith("3.")
    served, documented = routes(app), described(spec)
    assert served - documented == set(), "routes missing from the OpenAPI description"
    assert documented - served == set(), "the OpenAPI description names routes the app does not serve"


@pytest.mark.parametrize("app_name", ["generator_app", "monitor_app"])
def test_every_operation_documents_its_errors_as_json(app_name: str, request: pytest.FixtureRequest) -> None:
    spec = request.getfixturevalue(app_name).test_client().get("/openapi.json").get_json()
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            assert operation.get("summary"), f"{method.upper()} {path} has no summary"
            for status in operation["responses"]:
                assert status.isdigit(), f"{method.upper()} {path}: response {status!r} is not a status code"
