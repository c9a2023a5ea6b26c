"""In a real browser: the dashboard's CSV buttons never filter to a host with no jobs without saying so.

The split an analyst met: the monitor samples as `analyst-box`, the generator tags its jobs `vm`. The page opens
on the monitor's own host, whose jobs CSV would hold only its header; the note beside the buttons says so,
names the host that had jobs and offers them all. A monitor alone is served (no generator: nothing here needs
one), with a job and samples written through its own ingest and writer.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from playwright.sync_api import Browser, Page, expect

from monitor.analysis.predict import JobShape
from monitor.compose import create_app
from monitor.config import MonitorConfig
from monitor.web.context import get_context
from tests.browser.conftest import DESKTOP, screenshots
from tests.monitor.history import gpu_sample, job_events
from tests.servers import AppServer

SAMPLED, JOBS_FROM = "analyst-box", "vm"


@pytest.fixture(scope="module")
def monitor_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Serve a monitor that samples as `analyst-box` and holds one job tagged `vm`, ended ten minutes ago."""
    root = tmp_path_factory.mktemp("report-hosts")
    config = replace(
        MonitorConfig(),
        store_url=f"sqlite:///{root / 'monitor.db'}",
        spool_dir=root / "spool",
        data_dir=root,
        alert_state_path=None,
        host_name=SAMPLED,
    )
    app = create_app(config)
    now_s = time.time()
    events = job_events("j1", submitted_s=now_s - 600, shape=JobShape(512, 16, 20), run_s=5.0, peak_bytes=1, host="vm")
    answer = app.test_client().post("/monitor/api/events", json={"events": [e.to_dict() for e in events]})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    ctx = get_context(app)
    ctx.writer.write([gpu_sample(used=10**9, host=SAMPLED, at_ns=int((now_s - ago) * 1e9)) for ago in range(2, 120, 2)])
    assert ctx.writer.flush()
    server = AppServer(app).start()
    try:
        yield server.url
    finally:
        server.stop()
        ctx.close()


@pytest.fixture
def dashboard(browser: Browser, monitor_url: str) -> Iterator[Page]:
    context = browser.new_context(viewport=DESKTOP, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"the page raised JavaScript errors: {errors}"


def download_rows(page: Page, selector: str) -> list[list[str]]:
    with page.expect_download() as download:
        page.click(selector)
    return list(csv.reader(io.StringIO(download.value.path().read_text(encoding="utf-8"))))


def test_a_host_without_jobs_is_named_beside_the_csv_buttons_with_all_hosts_offered(
    dashboard: Page, monitor_url: str
) -> None:
    dashboard.goto(f"{monitor_url}/monitor/?window=1h")
    note = dashboard.locator("#reports-host")
    expect(note).to_be_visible(timeout=20_000)
    expect(note).to_contain_text(f"No jobs from {SAMPLED} in the last hour")
    expect(note).to_contain_text(f"Jobs came from {JOBS_FROM}")
    expect(note).to_contain_text("I2V_HOST_NAME")  # the split is named, with its fix
    assert f"host={SAMPLED}" in (dashboard.get_attribute("#csv-jobs", "href") or "")
    screenshots(dashboard, "report-hosts-split")

    # What the note warns of is so: the filtered CSV is its header alone; the offered one holds the job.
    assert len(download_rows(dashboard, "#csv-jobs")) == 1
    every_host = download_rows(dashboard, "#csv-jobs-all")
    assert [row[every_host[0].index("host")] for row in every_host[1:]] == [JOBS_FROM]


def test_a_host_with_jobs_but_no_samples_is_told_its_gpu_csv_would_be_empty_and_its_job_opens(
    dashboard: Page, monitor_url: str
) -> None:
    dashboard.goto(f"{monitor_url}/monitor/?window=1h&host={JOBS_FROM}")
    note = dashboard.locator("#reports-host")
    expect(note).to_contain_text(f"No samples from {JOBS_FROM} in the last hour", timeout=20_000)
    expect(note).not_to_contain_text("No jobs from")
    expect(dashboard.locator("#csv-jobs-all")).to_have_count(0)
    # Its job, listed and opened, reads by the shared names (job_id, state) the dashboard now uses.
    dashboard.locator('button.job-link[data-job="j1"]').click()
    expect(dashboard.locator("#detail-id")).to_have_text("j1", timeout=10_000)
    expect(dashboard.locator("#detail-status")).to_have_text("succeeded")
