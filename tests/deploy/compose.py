"""Helpers for the deployment tests: the repository's compose file, its CLI, and a filled-in .env."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"


def load_compose() -> dict[str, Any]:
    """Return docker-compose.yml as written (no interpolation)."""
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


def compose_cli() -> list[str]:
    """Return the compose command: Debian's docker-compose, else the docker CLI's compose plugin."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0:
        return [docker, "compose"]
    pytest.fail("docker-compose is missing: run scripts/install-system-deps.sh (Debian package docker-compose)")


def filled_env(directory: Path) -> tuple[Path, dict[str, str]]:
    """Write .env.example with every empty value filled in, as a user does; return its path and the values."""
    password = secrets.token_hex(8)
    fill = {
        "I2V_HOST_NAME": "gpu-host-1",
        "I2V_ADMIN_TOKEN": secrets.token_hex(12),
        "I2V_INGEST_TOKEN": secrets.token_hex(12),
        "I2V_VIEWER_TOKEN": secrets.token_hex(12),
        "INFLUXDB_ADMIN_PASSWORD": password,
        "INFLUXDB_READ_USER_PASSWORD": secrets.token_hex(8),
        "MONITOR_STORE": f"influxdb://admin:{password}@influxdb:8086/i2v",
        "GRAFANA_ADMIN_PASSWORD": secrets.token_hex(8),
    }
    lines, values = [], {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            value = value or fill[key]  # a KeyError names an empty key this helper does not know yet
            values[key] = value
            line = f"{key}={value}"
        lines.append(line)
    path = directory / "filled.env"
    path.write_text("\n".join(lines) + "\n")
    return path, values


def run_compose_config(env_file: Path) -> subprocess.CompletedProcess[str]:
    """Run `compose config` on the repository's file with `env_file` and none of this process's variables."""
    environ = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    files = ["--project-directory", str(ROOT), "-f", str(COMPOSE_FILE), "--env-file", str(env_file)]
    return subprocess.run(
        [*compose_cli(), *files, "config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
        env=environ,
    )
