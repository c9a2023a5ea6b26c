"""The aggregation report: group finished jobs by any parameter and by day, over HTTP and the command line."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from common.events import Event
from monitor.__main__ import main as monitor_main
from monitor.analysis.aggregate import GroupingError, aggregate_rows, parse_group_by
from monitor.analysis.job_summary import JobSummarizer
from monitor.analysis.predict import JobShape
from monitor.compose import create_app
from monitor.config import MonitorConfig
from monitor.storage import Store, open_store
from tests.monitor.history import NOW_NS, NOW_S, job_events

DAY_S = 86_400


def history() -> list[Event]:
    """Two days of jobs: guidance 9 and guidance 1 (half the work) at 512p, a failure, a cancel, at 768p."""
    events: list[Event] = []
    for day in (1, 0):
        t0 = NOW_S - day * DAY_S - 3600
        events += job_events(f"g9-{day}", submitted_s=t0, shape=JobShape(512, 16, 20, 9.0), run_s=6.0, peak_bytes=1)
        events += job_events(
            f"g1-{day}", submitted_s=t0 + 60, shape=JobShape(512, 16, 20, 1.0), run_s=3.0, peak_bytes=1
        )
        events += job_events(
            f"oom-{day}", submitted_s=t0 + 120, shape=JobShape(768, 16, 20), run_s=2.0, peak_bytes=None,
            status="failed", error="CUDA out of memory",
        )  # fmt: skip
        events += job_events(
            f"gone-{day}", submitted_s=t0 + 180, shape=JobShape(768, 16, 20), run_s=1.0, peak_bytes=None,
            status="cancelled",
        )  # fmt: skip
    return events


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = open_store(f"sqlite:///{tmp_path}/monitor.db")
    JobSummarizer(store.write, store).listen(history())
    yield store
    store.close()


def rows(store: Store, group_by: str) -> list[dict[str, str]]:
    keys = parse_group_by(group_by)
    out = io.StringIO()
    from monitor.analysis.aggregate import write_aggregate

    write_aggregate(store, out, NOW_NS - 3 * DAY_S * 10**9, NOW_NS, keys)
    return list(csv.DictReader(io.StringIO(out.getvalue())))


def test_per_day_and_guidance_groups_answer_the_analysts_question(store: Store) -> None:
    by = {(r["day"], r["guidance_scale"], r["resolution"]): r for r in rows(store, "day,guidance_scale,resolution")}
    assert len(by) == 6  # two days x (g9 512p, g1 512p, g9 768p)
    g9 = by[("2024-04-30", "9.0", "512")]
    g1 = by[("2024-04-30", "1.0", "512")]
    assert (g9["jobs"], g9["succeeded"], g1["jobs"]) == ("1", "1", "1")
    assert float(g9["run_s_p50"]) > float(g1["run_s_p50"])  # guidance 1 is half the work: not pooled with 9
    failed_group = by[("2024-05-01", "9.0", "768")]
    assert (failed_group["failed"], failed_group["cancelled"], failed_group["jobs"]) == ("1", "1", "2")
    assert failed_group["success_rate"] == "0.0"
    assert failed_group["success_rate_without_cancels"] == "0.0"


def test_success_rates_with_and_without_the_users_own_cancels(store: Store) -> None:
    (row,) = [r for r in rows(store, "day") if r["day"] == "2024-05-01"]
    assert (row["jobs"], row["succeeded"], row["failed"], row["cancelled"]) == ("4", "2", "1", "1")
    assert float(row["success_rate"]) == pytest.approx(0.5)
    assert float(row["success_rate_without_cancels"]) == pytest.approx(2 / 3, abs=1e-4)
    assert float(row["gpu_seconds"]) > 0


@pytest.mark.parametrize("text", ["", "day,day", "prompt", "resolution,nope"])
def test_a_grouping_it_cannot_make_lists_what_it_can(text: str) -> None:
    with pytest.raises(GroupingError, match="guidance_scale"):
        parse_group_by(text or ",")


def test_over_http_and_from_the_command_line_the_same_rows(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dataclasses import replace

    config = replace(
        MonitorConfig(), store_url=f"sqlite:///{tmp_path}/monitor.db", spool_dir=tmp_path / "spool", data_dir=tmp_path
    )
    app = create_app(config, clock_ns=lambda: NOW_NS)
    try:
        client = app.test_client()
        answer = client.get("/monitor/api/reports/aggregate.csv?since=3d&group_by=day,status")
        assert answer.status_code == 200
        http = answer.get_data(as_text=True)
        refused = client.get("/monitor/api/reports/aggregate.csv?group_by=prompt")
        assert refused.status_code == 400
        assert "group_by must be" in refused.get_json()["error"]
    finally:
        from monitor.web.context import get_context

        get_context(app).close()
    out = tmp_path / "aggregate.csv"
    argv = ["report", "aggregate", "--data-dir", str(tmp_path), "--group-by", "day,status", "-o", str(out)]
    assert monitor_main([*argv, "--since", "2024-04-28", "--until", "2024-05-01T12:10:00Z"]) == 0
    assert out.read_bytes().decode("utf-8") == http
    assert len(list(csv.DictReader(io.StringIO(http)))) == 6  # two days x succeeded, failed, cancelled
    assert list(aggregate_rows(store, 0, 1, ("day",))) == []


def test_the_summary_honours_since_and_until_and_keeps_guidance_apart(store: Store, tmp_path: Path) -> None:
    from dataclasses import replace

    from monitor.web.context import get_context

    config = replace(
        MonitorConfig(), store_url=f"sqlite:///{tmp_path}/monitor.db", spool_dir=tmp_path / "spool", data_dir=tmp_path
    )
    app = create_app(config, clock_ns=lambda: NOW_NS)
    try:
        body = app.test_client().get("/monitor/api/summary?since=2024-05-01&until=2024-05-02").get_json()
    finally:
        get_context(app).close()
    assert (body["since"], body["until"]) == ("2024-05-01T00:00:00.000000Z", "2024-05-02T00:00:00.000000Z")
    by = {(c["resolution"], c["guidance_scale"]): c for c in body["configurations"]}
    assert by[(512, 9.0)]["jobs"] == by[(512, 1.0)]["jobs"] == 1  # the day before is outside the span
    assert by[(512, 9.0)]["median_s"] > by[(512, 1.0)]["median_s"]
    big = by[(768, 9.0)]
    assert (big["failed"], big["cancelled"], big["success_rate"], big["success_rate_without_cancels"]) == (
        1,
        1,
        0.0,
        0.0,
    )
    assert by[(512, 9.0)]["queued_s_p50"] == pytest.approx(0.5, abs=0.01)
