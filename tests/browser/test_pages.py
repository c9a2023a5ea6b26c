"""In a real browser: submit a job on the generator's page, watch it finish and play, then read the monitor tab.

The tests walk one page in order, as a user would: the form first, then a job, then the monitor tab that the
generator's page links to. One tiny job (256 px, 8 frames, 10 steps: about 10 s on two cores) is all they run.
Screenshots of both pages at 1280x800 and phone width go to artifacts/.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from typing import Any

import pytest
import requests
import torch
from playwright.sync_api import Page, Request, expect

from common.events import Event, utc_now_iso
from common.sizing import LIMITS, RESOLUTIONS
from generator.validation import MAX_PROMPT_CHARS
from monitor.alerts import label_set
from tests.browser.conftest import HOST, Stack, screenshots
from tests.generator.conftest import png_bytes

JOB_DEADLINE_MS = 180_000  # the tiny job takes about 10 s alone; two shared cores can make it much slower
PROMPT = "a red fox running through snow"
STALE = re.compile(r"\bstale\b")  # the panels' class while their data is not current

# The dashboard's Chart.js instances, read in the page: how many points each dataset holds.
CHART_POINTS = "(id) => { const c = Chart.getChart(document.getElementById(id)); return c ? c.data.datasets.map((d) => d.data.length) : null; }"  # noqa: E501
STAGE_LABELS = "() => Chart.getChart(document.getElementById('chart-stages')).data.labels"
STAGE_SECONDS = """(prefix) => {
  const chart = Chart.getChart(document.getElementById('chart-stages'));
  const row = chart.data.labels.findIndex((label) => label.startsWith(prefix));
  return row < 0 ? 0 : chart.data.datasets.reduce((sum, d) => sum + d.data[row], 0);
}"""


def served_routes(app: object) -> set[str]:
    """Return the URL rules an app serves."""
    return {rule.rule for rule in app.url_map.iter_rules()}  # type: ignore[attr-defined]


def test_the_form_checks_the_server_bounds_before_sending(page: Page, stack: Stack) -> None:
    page.goto(stack.generator.url)
    bounds = json.loads(page.text_content("#bounds") or "{}")
    assert bounds == {
        "resolutions": list(RESOLUTIONS),
        "limits": {name: list(limits) for name, limits in LIMITS.items()},
        "max_prompt": MAX_PROMPT_CHARS,
        "max_upload_bytes": stack.generator.config.max_upload_bytes,
        "viewer_token_required": False,
    }
    posts: list[str] = []
    page.on("request", lambda request: posts.append(request.url) if request.method == "POST" else None)
    page.get_by_label("Frames").fill("7")
    page.get_by_label("Steps").fill("101")
    page.get_by_label("Guidance").fill("2.5")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#num_frames-error")).to_have_text("must be between 8 and 32")
    expect(page.locator("#steps-error")).to_have_text("must be between 10 and 100")
    expect(page.locator("#guidance_scale-error")).to_have_text("")
    expect(page.locator("#image-error")).not_to_be_empty()
    expect(page.locator("#prompt-error")).not_to_be_empty()
    expect(page.locator("#image")).to_be_focused()  # the first field to fix
    expect(page.locator("#num_frames")).to_have_attribute("aria-invalid", "true")
    page.get_by_label("Frames").fill("8")
    expect(page.locator("#num_frames-error")).to_have_text("")
    assert posts == []


def test_the_recommendation_prefills_the_form_or_says_why_not(page: Page, stack: Stack) -> None:
    page.goto(stack.generator.url)  # a fresh form: fields the user touched are never overwritten
    answer = requests.get(f"{stack.generator.url}/api/recommendation", timeout=10)
    note = page.locator("#recommendation")
    assert answer.ok, answer.text  # a GPU the monitor has samples of, or (CI) this CPU, advised by time
    body = answer.json()
    expect(note).to_have_attribute("data-state", "applied")
    expect(page.get_by_label("Steps")).to_have_value(str(body["recommended"]["steps"]))
    expect(note).to_contain_text("Recommended for this CPU" if body["basis"] == "time" else "Recommended for this GPU")


def test_a_job_submitted_on_the_page_reaches_100_percent_and_plays(page: Page, stack: Stack) -> None:
    page.goto(stack.generator.url)
    image = {"name": "input.png", "mimeType": "image/png", "buffer": png_bytes()}
    page.get_by_label("Image").set_input_files(files=[image])
    page.get_by_label("Prompt").fill(PROMPT)
    page.get_by_label("Resolution").select_option("256")
    page.get_by_label("Frames").fill("8")
    page.get_by_label("Steps").fill("10")
    page.get_by_role("button", name="Generate").click()

    expect(page.locator("#job")).to_be_visible()
    expect(page.locator("#job-state")).to_contain_text("step", timeout=JOB_DEADLINE_MS)  # "Running · step n of 10"
    page.wait_for_function("document.getElementById('progress').value === 1", timeout=JOB_DEADLINE_MS)
    expect(page.locator("#progress-label")).to_have_text("100%")
    expect(page.locator("#job-state")).to_contain_text("Done")
    expect(page.locator("#job-failure")).to_be_hidden()
    page.wait_for_function(
        "(() => { const v = document.getElementById('video'); return v.readyState >= 2 && v.duration > 0; })()",
        timeout=30_000,
    )
    assert page.eval_on_selector("#video", "(v) => v.videoWidth") == 256
    screenshots(page, "generator")


def test_the_monitor_tab_draws_the_samples_and_the_jobs_stage_bars(page: Page, stack: Stack) -> None:
    job_id = page.get_attribute("#job-id", "title")
    assert job_id
    page.get_by_role("link", name="Monitor").click()
    page.wait_for_url(f"{stack.monitor_url}/monitor/")
    expect(page.locator("#updated")).to_contain_text("Updated", timeout=15_000)
    page.wait_for_function(f"({CHART_POINTS})('chart-host').every((n) => n > 0)", timeout=15_000)
    page.wait_for_function(f"({STAGE_SECONDS})('{job_id[:8]}') > 0", timeout=30_000)
    # The bar appears with the job's first stages; its label says succeeded once the job's end is ingested.
    page.wait_for_function(
        f"({STAGE_LABELS})().some((label) => label.startsWith('{job_id[:8]} succeeded'))", timeout=30_000
    )
    expect(page.locator("#jobs tbody")).to_contain_text(job_id[:8])
    running = "Chart.getChart(document.getElementById('chart-queue')).data.datasets[0].data.some((p) => p.y >= 1)"
    page.wait_for_function(running, timeout=15_000)  # the job ran within the window: the queue chart shows it

    status = stack.api("/status").json()
    if status["gpu_count"]:
        page.wait_for_function(f"({CHART_POINTS})('chart-util').some((n) => n > 0)", timeout=15_000)
    else:  # CI: no GPU, and the GPU charts say so instead of sitting empty
        for overlay in page.locator(".card.gpu .nogpu").all():
            expect(overlay).to_be_visible()
            expect(overlay).to_contain_text(f"No GPU on {HOST}")
    # The monitor scores the clip after the job (motion only: no CLIP weights here) and the chart shows it.
    page.wait_for_function(f"({CHART_POINTS})('chart-quality')[0] > 0", timeout=60_000)
    expect(page.locator("#chart-quality + .empty")).to_be_hidden()


def test_the_fleet_panel_shows_the_local_worker_and_the_in_process_queue(page: Page, stack: Stack) -> None:
    rows = page.locator("#fleet tbody tr")
    expect(rows).to_have_count(1, timeout=15_000)  # single-host mode: the one local worker, same shape
    expect(rows.first.locator("td").nth(0)).to_have_text(HOST)
    expect(rows.first.locator("td").nth(1)).to_have_text("idle")
    device = "CPU" if stack.generator.runtime.workers[0].gpu == "cpu" else "GPU 0"
    expect(rows.first.locator("td").nth(3)).to_contain_text(device)
    expect(rows.first.locator("td").nth(5)).to_have_text("tiny")
    expect(page.locator("#fleet-status")).to_contain_text("In-process queue")
    expect(page.locator("#fleet-queue li")).to_have_text(["high: 0 waiting", "normal: 0 waiting", "batch: 0 waiting"])


def test_the_window_selector_changes_every_time_chart(page: Page, stack: Stack) -> None:
    page.get_by_label("Window").focus()
    page.keyboard.press("End")  # keyboard only: the last option, 24 h
    expect(page.get_by_label("Window")).to_have_value("24h")
    span = "(id) => { const s = Chart.getChart(document.getElementById(id)).options.scales.x; return s.max - s.min; }"
    for chart in ("chart-host", "chart-queue", "chart-util"):
        page.wait_for_function(f"Math.abs(({span})('{chart}') - 86400000) < 5000", timeout=10_000)
    page.get_by_label("Window").select_option("5m")
    page.wait_for_function(f"Math.abs(({span})('chart-host') - 300000) < 5000", timeout=10_000)


def test_the_jobs_list_is_fetched_when_a_job_changes_state_not_on_every_event(page: Page, stack: Stack) -> None:
    fetched: list[str] = []

    def record(request: Request) -> None:
        if "/monitor/api/" in request.url:
            fetched.append(request.url.split("/monitor/api/", 1)[1].split("?", 1)[0])

    def ingest(**kwargs: Any) -> None:
        kind = "job" if "status" in kwargs else "stage"
        event = Event(job_id="probe", host=HOST, gpu="probe", kind=kind, started_at=utc_now_iso(), **kwargs)
        requests.post(f"{stack.monitor_url}/monitor/api/events", json=[event.to_dict()], timeout=10).raise_for_status()

    def next_status_poll() -> Any:
        return page.expect_request(lambda request: "/monitor/api/status" in request.url, timeout=15_000)

    page.on("request", record)
    try:
        with next_status_poll():
            ingest(status="running")
        with next_status_poll():  # the tick that saw the state change has fetched the list
            pass
        start = len(fetched)
        for step in range(1, 5):  # denoising steps: every poll sees new events, no job changes state
            with next_status_poll():
                ingest(stage="denoising_step", step=step, total_steps=4, duration_s=0.1)
        with next_status_poll():
            pass
        during = fetched[start:]
        assert during.count("status") >= 5
        assert during.count("jobs") <= 1, during  # at most its 15 s refresh, not one per poll with new events
        with page.expect_request(lambda request: "/monitor/api/jobs?" in request.url, timeout=15_000):
            ingest(status="cancelled")
    finally:
        page.remove_listener("request", record)


def test_an_alert_from_the_engine_appears_in_the_panel_coloured_by_tier(page: Page, stack: Stack) -> None:
    gpus = stack.api("/status").json()["gpu_count"] or 0
    labels = label_set(host=HOST, gpu=str(gpus))  # a GPU index with no card: real samples cannot clear it
    engine = stack.monitor.alerts.engine
    now = time.time()
    engine.evaluate({labels: {"gpu_memory_ratio": 0.9}}, now=now - 31)  # over 85% for longer than `for: 30s`
    engine.evaluate({labels: {"gpu_memory_ratio": 0.9}}, now=now)
    item = page.locator('#alerts li.alert.warning.firing[data-alert="GpuMemoryHigh"]')
    expect(item).to_contain_text("GpuMemoryHigh", timeout=10_000)
    expect(item).to_contain_text(f"GPU {gpus}")
    assert item.evaluate("(node) => getComputedStyle(node).backgroundColor") == "rgb(255, 248, 197)"
    screenshots(page, "monitor")
    engine.evaluate({labels: {"gpu_memory_ratio": 0.5}})  # below the clear line: resolved
    expect(page.locator('#alerts li[data-alert="GpuMemoryHigh"]')).to_have_count(0, timeout=10_000)


def test_the_csv_buttons_download_the_reports(page: Page, stack: Stack) -> None:
    if "/monitor/api/reports/jobs.csv" not in served_routes(stack.monitor.app):
        expect(page.locator("#csv-jobs")).to_have_attribute("aria-disabled", "true", timeout=35_000)
        expect(page.locator("#reports-status")).to_contain_text("not available")
        return
    expect(page.locator("#csv-jobs")).to_have_attribute("aria-disabled", "false", timeout=35_000)
    page.get_by_label("Window").select_option("24h")
    job_id = stack.api("/jobs?limit=1").json()["jobs"][0]["id"]
    for button, header in (("#csv-jobs", "job_id"), ("#csv-gpu", "gpu")):
        with page.expect_download() as download:
            page.click(button)
        text = download.value.path().read_text(encoding="utf-8")
        rows = list(csv.reader(io.StringIO(text)))
        assert header in rows[0], rows[0]
        if button == "#csv-jobs":
            assert any(job_id in row for row in rows[1:]), rows


def test_a_banner_with_the_last_good_time_replaces_live_charts_when_the_monitor_is_down(
    page: Page, stack: Stack
) -> None:
    banner = page.locator("#banner")
    expect(banner).to_be_hidden(timeout=10_000)
    page.route(f"{stack.monitor_url}/monitor/api/**", lambda route: route.abort("connectionrefused"))
    expect(banner).to_contain_text("The monitor has not answered since", timeout=10_000)
    expect(page.locator("#panels")).to_have_class(STALE)
    expect(banner).to_contain_text(re.compile(r"show data up to \d\d:\d\d:\d\d, the last good update"))
    page.unroute(f"{stack.monitor_url}/monitor/api/**")
    expect(banner).to_be_hidden(timeout=10_000)
    expect(page.locator("#panels")).not_to_have_class(STALE)


def test_a_store_outage_reported_by_status_shows_its_banner(page: Page, stack: Stack) -> None:
    def store_down(route: object) -> None:
        response = route.fetch()  # type: ignore[attr-defined]
        body = {**response.json(), "store_reachable": False, "spool_pending": 42}
        route.fulfill(response=response, json=body)  # type: ignore[attr-defined]

    page.route(f"{stack.monitor_url}/monitor/api/status", store_down)
    banner = page.locator("#banner")
    expect(banner).to_contain_text("is unreachable since", timeout=10_000)
    expect(banner).to_contain_text("42 points are spooled")
    page.unroute(f"{stack.monitor_url}/monitor/api/status")
    expect(banner).to_be_hidden(timeout=10_000)


def test_a_failed_job_shows_its_error_and_the_suggestion(
    page: Page, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    unet = stack.generator.runtime.workers[0].pipe.unet

    def forward_that_runs_out_of_memory(*args: Any, **kwargs: Any) -> Any:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")

    monkeypatch.setattr(unet, "forward", forward_that_runs_out_of_memory)
    page.goto(stack.generator.url)
    image = {"name": "input.png", "mimeType": "image/png", "buffer": png_bytes()}
    page.get_by_label("Image").set_input_files(files=[image])
    page.get_by_label("Prompt").fill(PROMPT)
    page.get_by_label("Resolution").select_option("256")
    page.get_by_label("Frames").fill("8")
    page.get_by_label("Steps").fill("10")
    page.get_by_role("button", name="Generate").click()

    failure = page.locator("#job-failure")
    expect(failure).to_be_visible(timeout=JOB_DEADLINE_MS)
    expect(page.locator("#job-state")).to_have_text("Failed")
    expect(page.locator("#job-error")).to_contain_text("CUDA out of memory")
    expect(page.locator("#job-suggestion")).to_contain_text("Suggestion: ")
    expect(page.locator("#job-suggestion")).to_contain_text("GPU memory")
    expect(page.locator("#video")).to_be_hidden()
    expect(page.locator("#cancel")).to_be_hidden()
    screenshots(page, "generator-failed")
