"""In a real browser: a generator or monitor with a viewer token asks for it; signed in, pages, clips and jobs work.

The clip is a real H.264 file served from a finished job: a `<video src>` cannot send an Authorization header,
so it is the session cookie that must open it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from flask import Flask
from playwright.sync_api import Browser, Page, expect

from common.events import Event, utc_now_iso
from generator.jobs import Job
from generator.video import write_mp4
from monitor.web.context import get_context
from tests.api.conftest import make_generator_app, make_monitor_app
from tests.browser.conftest import DESKTOP, screenshots
from tests.generator.test_jobs import PARAMS
from tests.servers import AppServer, free_port

VIEWER = "v1ewer-token-for-the-browser"
JOB_ID = "c" * 32


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Serve an idle generator with a viewer token and one finished job with a real clip; yield its URL."""
    root = tmp_path_factory.mktemp("viewer-browser")
    app: Flask = make_generator_app(root, viewer_token=VIEWER)
    frames = np.linspace(0, 1, 8 * 64 * 64 * 3, dtype=np.float32).reshape(8, 64, 64, 3)
    clip = write_mp4(frames, root / "outputs" / JOB_ID / "video.mp4", fps=8)
    job = Job(JOB_ID, "a private prompt", PARAMS, PARAMS, state="succeeded", finished_at=1.0, video_path=str(clip))
    app.extensions["generator"].book.store_finished([job])
    port = free_port()
    server = AppServer(app, port=port).start()
    try:
        yield server.url
    finally:
        server.stop()
        app.extensions["generator"].close()


@pytest.fixture
def page(browser: Browser, served: str) -> Iterator[Page]:
    context = browser.new_context(viewport=DESKTOP)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert not errors, f"the page raised JavaScript errors: {errors}"


def test_the_page_asks_for_the_viewer_token_and_then_shows_the_form_and_plays_clips(page: Page, served: str) -> None:
    page.goto(served)
    expect(page.locator("#sign-in")).to_be_visible()
    expect(page.locator("#job-form")).to_be_hidden()
    screenshots(page, "generator-sign-in")

    page.get_by_label("Viewer token").fill("not the token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#sign-in-error")).to_contain_text("not this generator's viewer token")
    expect(page.locator("#job-form")).to_be_hidden()

    page.get_by_label("Viewer token").fill(VIEWER)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#job-form")).to_be_visible()
    expect(page.locator("#sign-in")).to_be_hidden()
    assert "i2v_viewer" not in page.evaluate("document.cookie")  # HttpOnly: no script can read the session

    status = page.evaluate(f"fetch('/api/jobs/{JOB_ID}').then((r) => r.json())")
    assert status["prompt"] == "a private prompt"
    page.evaluate(
        """(src) => { const v = document.getElementById('video'); v.hidden = false; v.src = src; }""",
        f"/api/jobs/{JOB_ID}/video",
    )
    page.wait_for_function(
        "(() => { const v = document.getElementById('video'); return v.readyState >= 2 && v.duration > 0; })()",
        timeout=30_000,
    )

    page.reload()  # the session outlives the page
    expect(page.locator("#job-form")).to_be_visible()
    expect(page.locator("#sign-in")).to_be_hidden()


@pytest.fixture(scope="module")
def monitor_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Serve a monitor (nothing started) with a viewer token and one job's event; yield its URL."""
    app: Flask = make_monitor_app(tmp_path_factory.mktemp("viewer-monitor"), viewer_token=VIEWER)
    event = Event(job_id=JOB_ID, host="api-host", gpu="0", kind="job", status="queued", started_at=utc_now_iso())
    assert app.test_client().post("/monitor/api/events", json={"events": [event.to_dict()]}).status_code == 200
    assert get_context(app).writer.flush(timeout_s=10)
    port = free_port()
    server = AppServer(app, port=port).start()
    try:
        yield server.url
    finally:
        server.stop()
        get_context(app).close()


def test_the_dashboard_asks_for_the_viewer_token_before_showing_jobs(page: Page, monitor_served: str) -> None:
    page.goto(f"{monitor_served}/monitor/?host=api-host")
    expect(page.locator("#sign-in")).to_be_visible()
    expect(page.locator("#jobs")).to_contain_text("sign in")
    page.get_by_label("Viewer token").fill(VIEWER)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#sign-in")).to_be_hidden()
    expect(page.locator("#jobs")).to_contain_text(JOB_ID[:8])
    expect(page.locator("#csv-jobs")).to_have_attribute("aria-disabled", "false")
