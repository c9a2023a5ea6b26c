"""Job summaries, paged reads and the CSV reports: read back with the csv module, they equal the stored jobs."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests

from common.events import Event
from monitor.__main__ import main as monitor_main
from monitor.analysis import jobs
from monitor.analysis.job_summary import JOB_SUMMARY, JobSummarizer
from monitor.analysis.predict import JobShape
from monitor.analysis.reports import GPU_COLUMNS, JOB_COLUMNS, QualityJoin, number_cell, text_cell
from monitor.compose import create_app
from monitor.config import MonitorConfig
from monitor.storage import Point, Store
from monitor.storage.pages import iter_points
from monitor.storage.schema import GPU_SAMPLE, event_to_point, point_to_event
from monitor.web.context import get_context
from tests.monitor.history import H100, NOW_NS, NOW_S, S, each_store, gpu_sample, job_events, store_url
from tests.servers import AppServer

T0 = NOW_S - 1800  # the jobs start half an hour before "now"


@pytest.mark.parametrize(
    ("text", "cell"),
    [
        ("=1+1", "'=1+1"),
        ('=HYPERLINK("http://evil","x")', '\'=HYPERLINK("http://evil","x")'),
        ("+33 6 12", "'+33 6 12"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=cmd", "'\t=cmd"),
        ("\r=cmd", "'\r=cmd"),
        ("a = b", "a = b"),
        ("'quoted already", "'quoted already"),
        ("", ""),
        (None, ""),
    ],
)
def test_text_cells_that_could_run_as_formulas_get_a_leading_quote(text: str | None, cell: str) -> None:
    assert text_cell(text) == cell


@pytest.mark.parametrize(
    ("value", "cell"),
    [(-1.5, "-1.5"), (-3, "-3"), (0.1, "0.1"), (7822573568, "7822573568"), (True, "true"), (None, ""), ("-1", "'-1")],
)
def test_numbers_stay_numbers_even_when_negative(value: object, cell: str) -> None:
    assert number_cell(value) == cell


@pytest.fixture(params=["sqlite", "influxdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    yield from each_store(request, tmp_path)


def test_pages_yield_every_point_once_in_order_even_when_points_share_an_instant(store: Store) -> None:
    points = [Point("m", {"host": "h", "gpu": str(i % 3)}, {"i": i}, T0 * S + (i // 3) * 1000) for i in range(31)]
    store.write(points)

    read = list(iter_points(store, "m", 0, 2**62, page_size=4))

    assert sorted(p.fields["i"] for p in read) == list(range(31))
    assert [p.time_ns for p in read] == sorted(p.time_ns for p in read)
    assert [p.fields["i"] for p in iter_points(store, "m", 0, 2**62, tags={"gpu": "1"}, page_size=2)] == list(
        range(1, 31, 3)
    )
    crowd = [Point("c", {"host": "h", "gpu": str(i)}, {"i": i}, T0 * S) for i in range(20)]
    store.write([*crowd, Point("c", {"host": "h"}, {"i": 20}, T0 * S + 1)])
    assert sorted(p.fields["i"] for p in iter_points(store, "c", 0, 2**62, page_size=2)) == list(range(21))


def stored_jobs(events: list[Event]) -> dict[str, dict[str, Any]]:
    """Return each job as the read API reconstructs it from its stored events."""
    grouped = jobs.group_by_job(point_to_event(event_to_point(e)) for e in events)
    return {job_id: jobs.summarize(job_id, evs) for job_id, evs in grouped.items()}


def scenario() -> list[Event]:
    """Four jobs: a plain one, a degraded one with an awkward prompt, an OOM whose error starts with =, a cancel."""
    shape = JobShape(512, 16, 20)
    return [
        *job_events("plain", submitted_s=T0, shape=shape, run_s=6.1, peak_bytes=7_822_573_568),
        *job_events(
            "degraded",
            submitted_s=T0 + 10,
            shape=JobShape(768, 24, 20),
            run_s=11.0,
            peak_bytes=14_000_000_000,
            prompt='=HYPERLINK("http://x") a "quoted", comma\nand line ünïcödé 🎬',
            requested={
                "resolution": 1024,
                "num_frames": 32,
                "steps": 20,
                "guidance_scale": 9.0,
                "fps": 8,
                "seed": None,
            },
            gpu="1",
        ),
        *job_events(
            "oom",
            submitted_s=T0 + 30,
            shape=JobShape(1024, 32, 20),
            run_s=3.0,
            peak_bytes=None,
            status="failed",
            error="=CUDA out of memory. Tried to allocate 2.00 GiB",
            prompt="@everyone -rf",
        ),
        *job_events(
            "gone", submitted_s=T0 + 40, shape=shape, run_s=1.0, peak_bytes=None, status="cancelled", prompt="+cmd"
        ),
    ]


def test_the_summarizer_writes_what_the_read_api_reconstructs(store: Store) -> None:
    events = scenario()
    JobSummarizer(store.write, store).listen(events)

    summaries = {p.fields["job_id"]: p for p in store.query_points(JOB_SUMMARY, 0, 2**62)}
    expected = stored_jobs(events)
    assert set(summaries) == set(expected)
    for job_id, point in summaries.items():
        job = expected[job_id]
        assert point.tags == {"host": "node-a", "gpu": job["gpu"], "status": job["status"]}
        assert point.fields["run_s"] == pytest.approx(job["run_s"])
        assert point.fields["run_s"] > 0
        assert point.fields.get("peak_memory_bytes") == job["peak_memory_bytes"]
        assert point.fields["complete"] is True
    assert summaries["degraded"].fields["requested_resolution"] == 1024
    assert summaries["degraded"].fields["resolution"] == 768
    assert summaries["plain"].fields["denoising_steps"] == 20
    assert summaries["gone"].fields.get("denoising_s") == pytest.approx(
        expected["gone"]["stages"]["denoising"]["duration_s"]
    )


def test_after_a_restart_the_summarizer_reads_the_jobs_earlier_events_back(store: Store) -> None:
    events = job_events("long", submitted_s=T0, shape=JobShape(512, 16, 30), run_s=9.0, peak_bytes=8 * 10**9)
    store.write([event_to_point(e) for e in events[:20]])  # heard and stored by the monitor before it restarted

    JobSummarizer(store.write, store).listen(events[20:])

    (point,) = store.query_points(JOB_SUMMARY, 0, 2**62)
    assert point.fields["complete"] is True
    assert point.fields["queued_s"] == pytest.approx(0.5)
    assert point.fields["text_encoding_s"] == pytest.approx(0.03)
    assert point.fields["denoising_steps"] == 30


def test_a_job_that_never_ends_is_summarised_as_it_stands_once_stale() -> None:
    written: list[Point] = []
    now = [0.0]
    summarizer = JobSummarizer(written.extend, stale_after_s=60, clock=lambda: now[0])
    events = job_events("stuck", submitted_s=T0, shape=JobShape(256, 8, 10), run_s=2.0, peak_bytes=None)
    summarizer.listen(events[:8])
    assert summarizer.open_jobs() == 1
    now[0] = 61
    summarizer.listen([])
    assert summarizer.open_jobs() == 0
    assert written[0].tags["status"] == "unfinished"


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def expected_cell(column: str, job: dict[str, Any], point: Point) -> str:
    """What a jobs.csv cell must hold for a job, from the read API's reconstruction of its events."""
    params, requested = job["params"], job["requested"] or job["params"]
    stages = job["stages"]
    texts = {
        "prompt": job["prompt"],
        "error": job["error"],
        "suggestion": job["suggestion"],
        "video_path": job["video_path"],
    }
    if column in texts:
        return text_cell(texts[column])
    if column in ("job_id", "host", "gpu", "status"):
        return text_cell(job["id"] if column == "job_id" else job[column])
    if column.endswith("_at"):
        return job[column] or ""
    if column.startswith("requested_"):
        return number_cell(requested.get(column.removeprefix("requested_")))
    if column in params or column in ("fps", "seed"):
        return number_cell(params.get(column))
    if column.endswith("_s") and column.removesuffix("_s") in stages:
        return number_cell(stages[column.removesuffix("_s")]["duration_s"])
    return number_cell(point.fields.get(column))


@pytest.fixture(params=["sqlite", "influxdb"])
def monitor_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    url = store_url(request.param, tmp_path, request)
    config = replace(MonitorConfig(), store_url=url, spool_dir=tmp_path / "spool", data_dir=tmp_path)
    app = create_app(config, clock_ns=lambda: NOW_NS)
    server = AppServer(app).start()
    yield server.url, app
    server.stop()
    get_context(app).close()


def test_jobs_csv_read_back_with_the_csv_module_equals_the_stored_jobs(monitor_server: tuple[str, Any]) -> None:
    url, app = monitor_server
    events = scenario()
    assert requests.post(f"{url}/monitor/api/events", json={"events": [e.to_dict() for e in events]}, timeout=10).ok
    writer = get_context(app).writer
    writer.write([gpu_sample(used=10**9), gpu_sample(used=10**9, gpu="1", name="=Other GPU")])
    quality = {"job_id": "plain", "clip_score": 31.5, "combined": 0.71, "static": False, "low_quality": False}
    writer.write([Point("quality", {"host": "node-a", "gpu": "0"}, quality, (T0 + 60) * S)])
    writer.write([Point("quality", {"host": "node-a", "gpu": "0"}, {**quality, "rating": 4}, (T0 + 600) * S)])
    assert writer.flush()

    response = requests.get(f"{url}/monitor/api/reports/jobs.csv", params={"since": "1h"}, timeout=10)

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8; header=present"
    raw = response.content.decode("utf-8")
    assert raw.startswith(",".join(JOB_COLUMNS) + "\r\n")
    assert raw.endswith("\r\n")
    assert "\n" not in raw.replace("\r\n", "").replace("comma\nand", "")  # the only bare LF is inside a quoted cell
    rows = read_csv(raw)
    assert [row["job_id"] for row in rows] == ["plain", "degraded", "oom", "gone"]  # by end time
    stored = stored_jobs(events)
    points = {p.fields["job_id"]: p for p in get_context(app).store.query_points(JOB_SUMMARY, 0, 2**62)}
    for row in rows:
        job = stored[row["job_id"]]
        for column in JOB_COLUMNS:
            if column in (
                "gpu_model",
                "clip_score",
                "i2v_subject",
                "smoothness",
                "temporal_flickering",
                "dynamic_degree",
                "static",
                "combined",
                "combined_before_rating",
                "low_quality",
                "rating",
                "parts_used",
                "clip_reason",
                "unscorable_reason",
                "denoising_steps",
                "mean_step_s",
                "queued_s",
                "run_s",
                "total_s",
                "peak_memory_bytes",
            ):
                continue
            assert row[column] == expected_cell(column, job, points[row["job_id"]]), column
        assert float(row["run_s"]) == pytest.approx(job["run_s"])
        assert float(row["total_s"]) == pytest.approx(job["total_s"])
        assert row["peak_memory_bytes"] == ("" if job["peak_memory_bytes"] is None else str(job["peak_memory_bytes"]))
    by_id = {row["job_id"]: row for row in rows}
    assert by_id["plain"]["gpu_model"] == H100
    assert by_id["degraded"]["gpu_model"] == "'=Other GPU"
    assert by_id["degraded"]["prompt"] == '\'=HYPERLINK("http://x") a "quoted", comma\nand line ünïcödé 🎬'
    assert by_id["oom"]["error"].startswith("'=CUDA out of memory")
    assert by_id["oom"]["prompt"] == "'@everyone -rf"
    assert by_id["gone"]["prompt"] == "'+cmd"
    assert (by_id["plain"]["clip_score"], by_id["plain"]["rating"], by_id["plain"]["static"]) == ("31.5", "4", "false")
    assert by_id["degraded"]["clip_score"] == ""
    assert (by_id["plain"]["combined"], by_id["plain"]["combined_before_rating"]) == ("0.71", "0.71")
    assert by_id["plain"]["denoising_steps"] == "20"

    only_gpu_host = requests.get(
        f"{url}/monitor/api/reports/jobs.csv", params={"since": "1h", "host": "elsewhere"}, timeout=10
    )
    assert read_csv(only_gpu_host.text) == []
    window = {"since": "2024-05-01T11:40:00Z", "until": "2024-05-01T11:40:25Z"}  # ends: 6.6 s, 21.5 s, 33.5 s, 41.5 s
    assert [
        r["job_id"]
        for r in read_csv(requests.get(f"{url}/monitor/api/reports/jobs.csv", params=window, timeout=10).text)
    ] == ["plain", "degraded"]


def test_gpu_csv_has_the_mean_and_max_per_bucket_host_and_gpu(store: Store, tmp_path: Path) -> None:
    start = (NOW_S // 60) * 60 - 180
    samples = []
    for second in range(0, 180, 2):
        for gpu in ("0", "1"):
            util = (second % 60) / 100 if gpu == "0" else 0.5
            samples.append(
                gpu_sample(
                    used=(10 + second // 60) * 10**9,
                    gpu=gpu,
                    at_ns=(start + second) * S,
                    utilization_ratio=util,
                    temperature_c=60.0,
                    power_w=300.5,
                )
            )
    store.write(samples)
    config = replace(MonitorConfig(), spool_dir=tmp_path / "spool", data_dir=tmp_path)
    app = create_app(config, store=store, clock_ns=lambda: NOW_NS)
    try:
        response = app.test_client().get(f"/monitor/api/reports/gpu.csv?since={NOW_S - start}s&bucket=1m")
        assert response.status_code == 200
        text = response.get_data(as_text=True)
    finally:
        get_context(app).writer.close()
    assert text.startswith(",".join(GPU_COLUMNS) + "\r\n")
    rows = read_csv(text)
    assert [(r["host"], r["gpu"]) for r in rows] == [("node-a", "0"), ("node-a", "1")] * 3
    first = rows[0]
    assert first["bucket_start"] == f"2024-05-01T12:0{(start % 3600) // 60}:00.000000Z"
    assert float(first["utilization_ratio_mean"]) == pytest.approx(sum(range(0, 60, 2)) / 30 / 100)
    assert float(first["utilization_ratio_max"]) == pytest.approx(0.58)
    assert float(rows[4]["memory_used_bytes_max"]) == 12 * 10**9
    assert rows[1]["gpu_model"] == H100
    assert float(rows[1]["power_w_mean"]) == pytest.approx(300.5)
    assert rows[1]["memory_total_bytes_max"] == str(80 * 10**9)
    assert [r["samples"] for r in rows] == ["30"] * 6  # a sample every 2 s in each 1 min bucket


@pytest.mark.parametrize(
    ("path", "query", "says"),
    [
        ("jobs.csv", "since=yesterday", "since must be a duration before now (90s, 15m, 24h, 7d), now, an RFC 3339"),
        ("jobs.csv", "since=2024-05-01T00:00:00", "since must be"),
        ("jobs.csv", "since=1h&until=2h", "since must be before until"),
        ("jobs.csv", "since=400d", "at most 366 days apart"),
        ("gpu.csv", "bucket=0s", "bucket must be a duration from 1s to 1d"),
        ("gpu.csv", "bucket=2d", "bucket must be a duration from 1s to 1d"),
    ],
)
def test_bad_report_parameters_get_a_400_saying_what_to_change(
    tmp_path: Path, path: str, query: str, says: str
) -> None:
    config = replace(MonitorConfig(), store_url=f"sqlite:///{tmp_path}/m.db", spool_dir=tmp_path / "spool")
    app = create_app(config, clock_ns=lambda: NOW_NS)
    try:
        response = app.test_client().get(f"/monitor/api/reports/{path}?{query}")
        assert response.status_code == 400
        assert says in response.get_json()["error"]
    finally:
        get_context(app).close()


def test_the_command_line_writes_the_same_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/m.db"
    from monitor.storage import open_store

    store = open_store(url)
    JobSummarizer(store.write, store).listen(scenario())
    store.close()
    out = tmp_path / "report.csv"

    status = monitor_main(
        [
            "report",
            "jobs",
            "--since",
            "2024-05-01T11:00:00Z",
            "--until",
            "2024-05-01T12:00:00Z",
            "-o",
            str(out),
            "--store",
            url,
        ]
    )

    assert status == 0
    assert "4 jobs row(s)" in capsys.readouterr().err
    rows = read_csv(out.read_text(encoding="utf-8"))
    assert [r["job_id"] for r in rows] == ["plain", "degraded", "oom", "gone"]
    assert out.read_bytes().count(b"\r\n") == 5  # the header and four rows (the prompt keeps its own LF, quoted)
    assert monitor_main(["report", "jobs", "--since", "soon", "--store", url]) == 2
    assert "since must be" in capsys.readouterr().err


def test_the_quality_join_holds_one_lag_of_points_whatever_the_report_length() -> None:
    lag_ns = 60 * S

    def quality_points() -> Iterator[Point]:
        for i in range(20_000):
            yield Point("quality", {"host": "h"}, {"job_id": f"j{i}", "combined": 0.5}, (T0 + i) * S + S // 2)

    join = QualityJoin(quality_points(), lag_ns)
    held = []
    for i in range(20_000):
        assert join.take(f"j{i}", (T0 + i) * S)["combined"] == 0.5
        held.append(len(join._latest))
    assert max(held) <= 1100  # one minute of jobs, plus what waits for the next clean-up


def test_gpu_samples_need_a_name_or_a_model_is_made_up(store: Store) -> None:
    store.write(
        [Point(GPU_SAMPLE, {"host": "h", "gpu": "3"}, {"memory_used_bytes": 1, "memory_total_bytes": 2}, NOW_NS)]
    )
    from monitor.analysis.devices import ModelNames

    names = ModelNames(store, NOW_NS)
    assert names.name("h", "3") == "gpu 3"
    assert names.name("h", "cpu") == "cpu"


def test_a_rated_job_keeps_the_score_it_had_before_its_rating() -> None:
    scored = Point("quality", {"host": "h"}, {"job_id": "j", "combined": 0.26, "parts_used": "clip,smoothness"}, 10)
    rated = Point("quality", {"host": "h"}, {"job_id": "j", "combined": 0.46, "rating": 5}, 20)
    unrated = Point("quality", {"host": "h"}, {"job_id": "k", "combined": 0.5}, 30)
    join = QualityJoin(iter([scored, rated, unrated]), lag_ns=100)
    j, k = join.take("j", 5), join.take("k", 5)
    assert (j["combined"], j["combined_before_rating"], j["rating"]) == (0.46, 0.26, 5)
    assert (k["combined"], k["combined_before_rating"]) == (0.5, 0.5)
