"""Fixtures that serve the real generator (tiny model) over HTTP on a free loopback port."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from PIL import Image

from generator.app import create_app
from generator.config import GeneratorConfig
from tests.servers import AppServer, free_port, wait_for

# The smallest job the API accepts: 256x256, 8 frames, 10 steps (about 10 s on two cores).
SMALL_JOB = {
    "prompt": "a red fox running through snow",
    "resolution": "256",
    "num_frames": "8",
    "steps": "10",
    "fps": "8",
}


def png_bytes(size: tuple[int, int] = (320, 240), color: tuple[int, int, int] = (200, 120, 40)) -> bytes:
    """Return a small PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class GeneratorServer:
    """A generator app served by waitress in this process: `url`, the Flask `app`, and helpers."""

    app: Flask
    url: str
    config: GeneratorConfig

    @property
    def runtime(self) -> Any:
        """The app's runtime (workers, book, events)."""
        return self.app.extensions["generator"]

    def submit(self, image: bytes | None = None, headers: dict[str, str] | None = None, **fields: str) -> Any:
        """POST a job; fields default to the smallest accepted job."""
        data = {**SMALL_JOB, **fields}
        files = {"image": ("input.png", png_bytes() if image is None else image, "image/png")}
        return requests.post(f"{self.url}/api/jobs", data=data, files=files, headers=headers, timeout=30)

    def job(self, job_id: str) -> dict[str, Any]:
        """Return a job's status."""
        return requests.get(f"{self.url}/api/jobs/{job_id}", timeout=10).json()

    def wait_state(self, job_id: str, states: tuple[str, ...], deadline_s: float = 300) -> dict[str, Any]:
        """Wait until the job is in one of `states` and return its status."""
        wait_for(lambda: self.job(job_id)["state"] in states, deadline_s, f"job {job_id} to reach {states}")
        return self.job(job_id)


def serve_generator(tmp: Path, **overrides: Any) -> Iterator[GeneratorServer]:
    """Start the tiny generator with its state under `tmp`; stop it afterwards."""
    config = GeneratorConfig(
        port=free_port(), outputs=tmp / "outputs", state_dir=tmp / "state", host_name="test-host", **overrides
    )
    app = create_app(config)
    # AppServer.stop closes the sockets from waitress' own loop: closing them from here, under its select(), was an
    # EBADF in the server's thread now and then, which failed the teardown of the last test of the module.
    server = AppServer(app, port=config.port, threads=8).start()
    handle = GeneratorServer(app, server.url, config)
    try:
        wait_for(lambda: requests.get(f"{handle.url}/ready", timeout=5).status_code == 200, 120, "the model to warm up")
        yield handle
    finally:
        server.stop()
        handle.runtime.close()


@pytest.fixture(scope="module")
def generator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GeneratorServer]:
    """A tiny-model generator with room for two queued jobs and an admin token."""
    yield from serve_generator(tmp_path_factory.mktemp("generator"), queue_size=2, admin_token="s3cret")
