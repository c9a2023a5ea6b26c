"""The project's version, one string for both services' `--version` and `*_build_info` (pyproject.toml's)."""

from __future__ import annotations

import platform

VERSION = "0.1.0"


def version_line(program: str) -> str:
    """Return what `--version` prints: the program, its version and the Python it runs on."""
    return f"{program} {VERSION} (Python {platform.python_version()})"
