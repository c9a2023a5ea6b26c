"""In a real browser, what users and analysts get: a first clip from the form as it starts, its progress pushed,
a star rating that changes the clip's combined score, a job's whole story on the dashboard, the daily report.

One page is walked in order, as a newcomer would: open the generator, pick an image and a prompt, press
Generate with the form as it starts, rate the clip, then open the job on the monitor tab. One tiny job runs to
its end; a second is followed by polling while its stream is refused, and cancelled. Screenshots at 1280x800
and phone width go to artifacts/.
"""

from __future__ import annotations

import csv
import io
import re

import requests
from playwright.sync_api import Page, Route, expect

from common.sizing import CPU_FIRST_CLIP
from tests.browser.conftest import ARTIFACTS, DESKTOP, PHONE, Stack, screenshots
from tests.generator.conftest import png_bytes
from tests.servers import wait_for

JOB_DEADLINE_MS = 240_000  # the smallest job takes about 10 s alone; two shared, loaded cores make it much slower
PROMPT = "a paper boat drifting on a pond"


def dialog_screenshots(page: Page, name: str) -> None:
    """Save what the open dialog shows at 1280x800 and phone width: its top, then scrolled to its end."""
    ARTIFACTS.mkdir(exist_ok=True)
    for label, viewport in (("1280x800", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(viewport)
        for part, scroll in (("top", "0"), ("end", "dialog.scrollHeight")):
            page.evaluate(
                f"() => {{ const dialog = document.getElementById('job-detail'); dialog.scrollTop = {scroll}; }}"
            )
            page.evaluate("() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")
            page.screenshot(path=str(ARTIFACTS / f"{name}-{label}-{part}.png"))
    page.set_viewport_size(DESKTOP)


def choose_image_and_prompt(page: Page) -> None:
    image = {"name": "input.png", "mimeType": "image/png", "buffer": png_bytes()}
    page.get_by_label("Image").set_input_files(files=[image])
    page.get_by_label("Prompt").fill(PROMPT)


def test_the_form_starts_from_a_job_that_finishes_quickly_on_this_cpu(page: Page, stack: Stack) -> None:
    page.goto(stack.generator.url)
    # As served, before any advice: the smallest job, since the generator runs on a CPU.
    for name in ("num_frames", "steps"):
        expect(page.locator(f"#{name}")).to_have_attribute("value", str(CPU_FIRST_CLIP[name]))
    expect(page.locator("#resolution option[selected]")).to_have_attribute("value", str(CPU_FIRST_CLIP["resolution"]))
    note = page.locator("#recommendation")
    expect(note).to_have_attribute("data-state", "applied")  # the monitor advised, by time, for this CPU
    expect(note).to_contain_text("Recommended for this CPU")

    def advice() -> dict:
        return requests.get(f"{stack.generator.url}/api/recommendation", timeout=10).json()

    # The generator's warm-up (spooled while the monitor was starting) tells the monitor how fast this CPU is.
    wait_for(lambda: advice()["predicted"]["source"] == "warmup", 60, "the warm-up to reach the monitor")
    answer = advice()
    assert answer["basis"] == "time"
    page.reload()
    expect(note).to_contain_text("from the generator's warm-up")
    expect(page.get_by_label("Steps")).to_have_value(str(answer["recommended"]["steps"]))
    expect(page.get_by_label("Frames")).to_have_value(str(answer["recommended"]["num_frames"]))
    screenshots(page, "users-form")


def test_progress_is_pushed_and_the_submitter_rates_the_clip_with_stars(page: Page, stack: Stack) -> None:
    polled: list[str] = []
    page.on("request", lambda r: polled.append(r.url) if re.search(r"/api/jobs/[0-9a-f]{32}$", r.url) else None)
    choose_image_and_prompt(page)
    page.get_by_role("button", name="Generate").click()  # the form as it started

    expect(page.locator("#job")).to_have_attribute("data-transport", "events")
    expect(page.locator("#job-state")).to_contain_text("step", timeout=JOB_DEADLINE_MS)
    expect(page.locator("#job-state")).to_contain_text("Done", timeout=JOB_DEADLINE_MS)
    expect(page.locator("#progress-label")).to_have_text("100%")
    assert polled == [], f"the page polled the job while its progress was pushed: {polled}"
    page.wait_for_function(
        "(() => { const v = document.getElementById('video'); return v.readyState >= 2 && v.duration > 0; })()",
        timeout=30_000,
    )
    job_id = page.get_attribute("#job-id", "title")
    assert job_id

    def quality() -> dict:
        return stack.api(f"/jobs/{job_id}/quality").json()

    rating = page.get_by_role("group", name="Rate this clip")
    expect(rating).to_be_visible()
    # Scored before the rating, so the change it makes shows (motion only: no CLIP weights here).
    wait_for(lambda: quality().get("status") == "scored", 120, "the clip to be scored")
    before = quality()["combined"]
    page.get_by_text("★").nth(4).click()  # five stars
    status = page.locator("#rating-status")
    expect(status).to_contain_text("Rated 5 stars", timeout=30_000)
    expect(status).to_have_attribute("data-state", "saved")
    after = quality()
    assert after["rating"] == 5
    assert "rating" in after["parts_used"]
    assert after["combined"] > before  # five stars are a 1.0 part: the combined score rises
    expect(status).to_contain_text(f"Combined quality now {after['combined']:.2f}")
    assert page.locator("#stars label.on").count() == 5
    screenshots(page, "users-rated")

    # Keyboard: the radio group moves with the arrow keys, and only where it stops is sent.
    page.locator("#star-5").focus()
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    expect(status).to_contain_text("Rated 3 stars", timeout=30_000)
    assert quality()["rating"] == 3


def test_a_refused_stream_falls_back_to_polling(page: Page, stack: Stack) -> None:
    def refuse(route: Route) -> None:
        route.fulfill(status=503, json={"error": "every stream slot is taken"}, headers={"Retry-After": "5"})

    page.route(re.compile(r".*/api/jobs/[0-9a-f]{32}/events$"), refuse)
    try:
        choose_image_and_prompt(page)
        page.get_by_role("button", name="Generate").click()
        expect(page.locator("#job")).to_have_attribute("data-transport", "polling", timeout=10_000)
        expect(page.locator("#job-state")).to_contain_text(re.compile("Queued|Running"), timeout=JOB_DEADLINE_MS)
    finally:
        page.unroute(re.compile(r".*/api/jobs/[0-9a-f]{32}/events$"))
    job_id = page.get_attribute("#job-id", "title")
    requests.post(f"{stack.generator.url}/api/jobs/{job_id}/cancel", timeout=10)  # no admin token here
    expect(page.locator("#job-state")).to_have_text("Cancelled", timeout=JOB_DEADLINE_MS)
    expect(page.locator("#rating")).to_be_hidden()  # nothing to rate


def test_a_jobs_whole_story_opens_from_the_dashboards_jobs_table(page: Page, stack: Stack) -> None:
    jobs = stack.api("/jobs?limit=5").json()["jobs"]
    done = next(j for j in jobs if j["status"] == "succeeded")
    series: list[str] = []
    page.on("request", lambda r: series.append(r.url) if "/monitor/api/series" in r.url else None)
    page.goto(f"{stack.monitor_url}/monitor/")
    button = page.locator(f'#jobs button[data-job="{done["id"]}"]')
    expect(button).to_be_visible(timeout=30_000)
    button.click()

    dialog = page.get_by_role("dialog", name=re.compile("Job"))
    expect(dialog).to_be_visible()
    expect(page.locator("#detail-id")).to_have_text(done["id"][:12], timeout=15_000)
    expect(page.locator("#detail-status")).to_have_text("succeeded")
    expect(page.locator("#detail-facts")).to_contain_text("256p · 8 frames")
    expect(page.locator("#detail-facts")).to_contain_text("CPU")
    stages = "Chart.getChart(document.getElementById('detail-timeline')).data.labels"
    page.wait_for_function(f"{stages}.some((l) => l.startsWith('denoising ('))", timeout=10_000)
    assert "decode video" in page.evaluate(stages)
    expect(page.locator("#detail-device-title")).to_have_text("Host CPU and memory over the job")
    device = "Chart.getChart(document.getElementById('detail-device')).data.datasets[0].data.length"
    page.wait_for_function(f"{device} > 0", timeout=10_000)
    expect(page.locator("#detail-quality")).to_contain_text("User rating (stars)")
    expect(page.locator("#detail-quality")).to_contain_text("3")
    expect(page.locator("#detail-cost")).to_contain_text("none (CPU)")
    page.wait_for_function(
        "(() => { const v = document.getElementById('detail-video'); return v.readyState >= 2 && v.duration > 0; })()",
        timeout=30_000,
    )
    assert page.url.endswith(f"#job-{done['id']}")  # linkable
    dialog_screenshots(page, "users-job-detail")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert "#job-" not in page.url

    # On a phone the detail fills the screen and closes with its button.
    page.set_viewport_size(PHONE)
    button.click()
    expect(dialog).to_be_visible()
    expect(page.locator("#detail-id")).to_have_text(done["id"][:12], timeout=15_000)
    box = dialog.bounding_box()
    assert box is not None
    assert box["width"] >= PHONE["width"] - 2
    page.get_by_role("button", name="Close the job's detail").click()
    expect(dialog).to_be_hidden()

    # The live view reads its samples as deltas after the first full read of the window.
    assert any("after_ms=" not in url for url in series)
    page.wait_for_event("request", lambda r: "/monitor/api/series" in r.url and "after_ms=" in r.url, timeout=15_000)


def test_the_daily_report_shows_today_and_downloads_as_csv(page: Page, stack: Stack) -> None:
    def jobs_today() -> int:
        rows = stack.api("/reports/aggregate.json?since=1d&group_by=day,resolution").json()["rows"]
        return sum(r["jobs"] for r in rows if r["resolution"] == 256)

    wait_for(lambda: jobs_today() >= 2, 60, "the cancelled job's end to reach the monitor")
    page.reload()
    table = page.locator("#daily tbody")
    expect(table).to_contain_text("256p", timeout=60_000)
    row = table.locator("tr").filter(has_text="256p").first
    cells = row.locator("td").all_inner_texts()
    assert int(cells[2]) >= 2  # the rated job and the cancelled one
    expect(page.locator("#daily-metric")).to_contain_text("jobs per day")  # no price, no GPU energy: jobs
    daily = "Chart.getChart(document.getElementById('chart-daily')).data.datasets.length"
    page.wait_for_function(f"{daily} > 0", timeout=10_000)
    with page.expect_download() as download:
        page.click("#csv-daily")
    rows = list(csv.DictReader(io.StringIO(download.value.path().read_text(encoding="utf-8"))))
    assert {
        "day",
        "resolution",
        "jobs",
        "failed",
        "run_s_p50",
        "run_s_p95",
        "combined_mean",
        "energy_j",
        "cost",
    } <= set(rows[0])
    screenshots(page, "users-daily")
