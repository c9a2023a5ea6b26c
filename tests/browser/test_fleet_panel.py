"""In Chromium: the dashboard's Workers and queue panel over queue mode, and what it says when it cannot know.

Real redis-server, the real queue-mode API (it runs no model, so it serves at once) and a real monitor reading it
through its --generator-url; the workers are announced in Redis as a worker's housekeeping announces itself, and
the jobs waiting were submitted through the API. Real worker processes behind the same view: tests/fleet.
Screenshots at 1280x800 and phone width go to artifacts/dashboard-fleet-*.png.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, Page, expect

from monitor.storage.base import Point
from monitor.storage.schema import GPU_SAMPLE
from monitor.web.context import get_context
from tests.browser.conftest import DESKTOP, screenshots
from tests.fleet.conftest import Served, announce, monitor_for, queue_api
from tests.generator.conftest import SMALL_JOB, png_bytes
from tests.servers import RedisServer, free_port

UUID = "GPU-5f1a2b3c-0000-1111-2222-333344445555"
GiB = 2**30
LEASE_S = 30.0  # the production lease: heartbeats every 10 s, stale past 20 s


@dataclass
class QueueStack:
    """Redis, the queue-mode API and a monitor reading it."""

    redis: RedisServer
    api: Served
    monitor: Served


@pytest.fixture(scope="module")
def queue_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QueueStack]:
    """Start Redis, the API (no model) and the monitor; stop them afterwards."""
    root = tmp_path_factory.mktemp("fleet-panel")
    redis = RedisServer(root / "redis").start()
    try:
        with (
            queue_api(root / "api", redis.url, lease_s=LEASE_S) as api,
            monitor_for(root / "monitor", api.url) as monitor,
        ):
            yield QueueStack(redis, api, monitor)
    finally:
        redis.stop()


@pytest.fixture(scope="module")
def panel_page(browser: Browser, queue_stack: QueueStack) -> Iterator[Page]:
    """A desktop page; any JavaScript error fails the module."""
    context = browser.new_context(viewport=DESKTOP)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert not errors, f"the dashboard raised JavaScript errors: {errors}"


def submit(url: str, priority: str) -> str:
    """Queue the smallest job at `priority` (no worker takes it: it waits)."""
    files = {"image": ("input.png", io.BytesIO(png_bytes()), "image/png")}
    response = requests.post(f"{url}/api/jobs", data={**SMALL_JOB, "priority": priority}, files=files, timeout=10)
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def test_the_panel_shows_every_worker_its_gpu_and_the_shared_queue(panel_page: Page, queue_stack: QueueStack) -> None:
    redis_url, store = queue_stack.redis.url, get_context(queue_stack.monitor.app).store
    running = submit(queue_stack.api.url, "normal")
    submit(queue_stack.api.url, "high")
    submit(queue_stack.api.url, "batch")
    fields = {"name": "NVIDIA H200", "memory_total_bytes": 140 * GiB, "memory_used_bytes": 31 * GiB,
              "utilization_ratio": 0.97, "temperature_c": 61.0, "up": True}  # fmt: skip
    store.write([Point(GPU_SAMPLE, {"host": "gpu-host-a", "gpu": "0", "uuid": UUID}, fields, time.time_ns())])
    announce(redis_url, "a0", host="gpu-host-a", gpu="0", gpu_name="NVIDIA H200", gpu_uuid=UUID, job_id=running)
    announce(redis_url, "b1", host="gpu-host-b", gpu="1", seen_at=time.time() - 25)  # two heartbeats missed
    announce(redis_url, "c0", host="gpu-host-c", gpu="0", ready=False)

    panel_page.goto(f"{queue_stack.monitor.url}/monitor/")
    rows = panel_page.locator("#fleet tbody tr")
    expect(rows).to_have_count(3, timeout=15_000)
    busy, idle, loading = (rows.nth(i).locator("td") for i in range(3))
    # Worker, state, job, GPU, heartbeat, model, GPU now.
    expect(busy.nth(0)).to_have_text("gpu-host-a")
    expect(busy.nth(1)).to_have_text("busy")
    expect(busy.nth(2)).to_contain_text(running[:8])
    expect(busy.nth(3)).to_contain_text("GPU 0 · NVIDIA H200")
    expect(busy.nth(3)).to_contain_text(UUID[:12])
    expect(busy.nth(6)).to_have_text("31.0 GB of 140.0 GB · 97% busy · 61 °C")
    expect(idle.nth(1)).to_have_text("idle")
    expect(idle.nth(4)).to_have_class("stale-heartbeat")
    expect(idle.nth(6)).to_have_text("no recent sample (its host's monitor?)")
    expect(idle.nth(6)).to_have_attribute("title", re.compile("no sample of GPU 1 on gpu-host-b"))
    expect(loading.nth(1)).to_have_text("loading")
    expect(loading.nth(5)).to_have_text("tiny (not loaded)")
    status = panel_page.locator("#fleet-status")
    expect(status).to_contain_text(f"Shared queue (Redis at {redis_url}): 3 waiting. 3 worker(s), 1 busy.")
    chips = panel_page.locator("#fleet-queue li")
    expect(chips).to_have_count(3)
    for chip, priority in zip(chips.all(), ("high", "normal", "batch"), strict=True):
        expect(chip).to_contain_text(f"{priority}: 1 waiting, oldest")
    screenshots(panel_page, "dashboard-fleet")
    # The running job opens its story, as in the jobs table (this monitor heard none of its events: it says so).
    with panel_page.expect_request(lambda request: f"/monitor/api/jobs/{running}/story" in request.url):
        panel_page.locator("#fleet button[data-job]").click()
    expect(panel_page.locator("#job-detail")).to_be_visible()
    panel_page.keyboard.press("Escape")
    expect(panel_page.locator("#job-detail")).to_be_hidden()


def test_the_panel_says_why_when_the_queue_or_the_generator_cannot_be_read(
    panel_page: Page, queue_stack: QueueStack, tmp_path: Path
) -> None:
    status = panel_page.locator("#fleet-status")
    expect(status).to_contain_text("Shared queue", timeout=15_000)
    queue_stack.redis.kill()
    expect(status).to_contain_text("Workers and queue unavailable: The generator at", timeout=30_000)
    expect(status).to_contain_text("cannot read its queue: the job queue (Redis at")
    expect(panel_page.locator("#fleet tbody")).to_contain_text("Unknown while the generator cannot be read")
    expect(panel_page.locator("#fleet-queue li")).to_have_count(0)
    queue_stack.redis.start()
    expect(status).to_contain_text("Shared queue", timeout=30_000)  # back by itself

    with monitor_for(tmp_path / "alone", f"http://127.0.0.1:{free_port()}") as alone:
        panel_page.goto(f"{alone.url}/monitor/")
        expect(panel_page.locator("#fleet-status")).to_contain_text(
            "did not answer (ConnectionError): workers unknown", timeout=15_000
        )
        panel_page.goto("about:blank")  # stop polling before this monitor stops
