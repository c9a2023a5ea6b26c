"""The generator as an operator runs it: `python -m generator` in its own process, jobs submitted over HTTP.

The monitor's process is `bench.harness.MonitorProcess`. Nothing here imports the generator's code: what a
benchmark learns about a job is what `GET /api/jobs/<id>` says.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from PIL import Image

from bench.harness import ROOT, free_port, wait_http
from common.events import epoch_s

FINAL_STATES = ("succeeded", "failed", "cancelled")
PROMPT = "a lighthouse on a cliff in a storm, waves breaking, cinematic"


@dataclass(frozen=True)
class Shape:
    """A job's size: resolution (px, square), frames and denoising steps."""

    resolution: int
    frames: int
    steps: int

    @property
    def label(self) -> str:
        """Return e.g. 512p/16/10."""
        return f"{self.resolution}p/{self.frames}/{self.steps}"

    def form(self) -> dict[str, str]:
        """Return the submission's form fields."""
        return {"resolution": str(self.resolution), "num_frames": str(self.frames), "steps": str(self.steps)}


class GeneratorProcess:
    """A real `python -m generator` on a free loopback port, its state and clips under `work`."""

    def __init__(
        self,
        work: Path,
        *,
        model: str,
        monitor_url: str | None = None,
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """Prepare the command; `start()` runs it and waits until /ready (model loaded and warmed)."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.work = work
        self.outputs = work / "outputs"
        work.mkdir(parents=True, exist_ok=True)
        self.command = [
            sys.executable, "-m", "generator", "--port", str(self.port), "--model", model,
            "--outputs", str(self.outputs), "--state-dir", str(work / "state"),
        ]  # fmt: skip
        if monitor_url:
            self.command += ["--monitor-url", monitor_url]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, deadline_s: float = 300.0) -> GeneratorProcess:
        """Run the generator and wait until it is ready (RuntimeError if it exits first)."""
        with (self.work / "generator.log").open("ab") as log:
            self.process = subprocess.Popen(
                self.command, cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL
            )
        try:
            wait_http(f"{self.url}/ready", deadline_s, self.process)
        except (TimeoutError, RuntimeError):
            self.stop()
            raise
        return self

    def health(self) -> dict[str, Any]:
        """Return /health (the PID, the workers, the events still spooled)."""
        return requests.get(f"{self.url}/health", timeout=10).json()

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM (the generator finishes its job and flushes its events), then SIGKILL after `timeout_s`."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def png(size: tuple[int, int] = (640, 480)) -> bytes:
    """Return an input image: a gradient, so the clip has some structure to score."""
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class Jobs:
    """Submit jobs to a generator and follow them over its HTTP API."""

    def __init__(self, url: str, *, poll_s: float = 0.2, prompt: str = PROMPT) -> None:
        """Talk to the generator at `url`, polling unfinished jobs every `poll_s`."""
        self.url, self.poll_s, self.prompt = url, poll_s, prompt
        self.session = requests.Session()
        self._image = png()

    def submit(self, shape: Shape, *, seed: int = 7) -> str:
        """Queue one job; return its id (HTTPError on a refusal)."""
        data = {"prompt": self.prompt, "fps": "8", "seed": str(seed), **shape.form()}
        answer = self.session.post(
            f"{self.url}/api/jobs", data=data, files={"image": ("input.png", self._image, "image/png")}, timeout=30
        )
        answer.raise_for_status()
        return answer.json()["job_id"]

    def get(self, job_id: str) -> dict[str, Any]:
        """Return the job's view."""
        answer = self.session.get(f"{self.url}/api/jobs/{job_id}", timeout=30)
        answer.raise_for_status()
        return answer.json()

    def run(
        self,
        shapes: Sequence[Shape],
        *,
        ahead: int = 1,
        deadline: float = float("inf"),
        on_poll: Callable[[int, dict[str, Any]], None] = lambda index, view: None,
        on_end: Callable[[int, dict[str, Any]], None] = lambda index, view: None,
    ) -> list[dict[str, Any]]:
        """Run jobs in order, keeping `ahead` queued behind the running one so the GPU never waits for a client.

        `on_poll(i, view)` hears every poll of job i while it is unfinished, `on_end(i, view)` its final view.
        Raises TimeoutError past `deadline` (time.monotonic()).
        """
        ids: list[str] = []
        ends: dict[int, dict[str, Any]] = {}
        while len(ends) < len(shapes):
            while len(ids) < len(shapes) and len(ids) - len(ends) <= ahead:
                ids.append(self.submit(shapes[len(ids)]))
            for index, job_id in enumerate(ids):
                if index in ends:
                    continue
                view = self.get(job_id)
                if view["state"] in FINAL_STATES:
                    ends[index] = view
                    on_end(index, view)
                else:
                    on_poll(index, view)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(shapes) - len(ends)} job(s) unfinished at the deadline")
            if len(ends) < len(shapes):
                time.sleep(self.poll_s)
        return [ends[i] for i in range(len(shapes))]


def run_s(view: dict[str, Any]) -> float | None:
    """Return a finished job's generation time (running to end) from its view."""
    if view.get("started_at") is None or view.get("finished_at") is None:
        return None
    return epoch_s(view["finished_at"]) - epoch_s(view["started_at"])


# A job's stages as the generator reports them (`stage_durations_s`), grouped; `other` is the rest of its span.
STAGES: dict[str, tuple[str, ...]] = {
    "encoding": ("text_encoding", "image_encoding", "image_latents"),
    "denoising": ("denoising",),
    "decode": ("decode_video",),
    "export": ("export",),
}
PARTS = ("whole", *STAGES, "other")


def stage_seconds(view: dict[str, Any]) -> dict[str, float | None]:
    """Return a finished job's seconds per part: the whole span, each stage group, and the rest of the span."""
    durations = view.get("stage_durations_s") or {}
    parts: dict[str, float | None] = {"whole": run_s(view)}
    for name, stages in STAGES.items():
        parts[name] = sum(durations[s] for s in stages) if all(s in durations for s in stages) else None
    known = [parts[name] for name in STAGES]
    whole = parts["whole"]
    parts["other"] = None if whole is None or None in known else whole - sum(k for k in known if k is not None)
    return parts
