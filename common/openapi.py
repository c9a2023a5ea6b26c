"""Serve a service's hand-written OpenAPI 3 description (a YAML file beside its code) as GET /openapi.json."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml
from flask import Flask, Response, jsonify


@functools.cache
def load_spec(path: Path) -> dict[str, Any]:
    """Read the YAML description once."""
    spec: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return spec


def register(app: Flask, path: Path) -> None:
    """Serve `path` (YAML) as JSON at /openapi.json on `app`."""

    def openapi() -> Response:
        return jsonify(load_spec(path))

    app.add_url_rule("/openapi.json", "openapi", openapi)
