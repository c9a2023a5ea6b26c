"""What a clip cost: its GPU energy from NVML's counter over its span, its GPU time, priced in jobs.csv and per day."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from flask import Flask

from monitor.analysis.cost import Prices
from monitor.analysis.energy import EnergyMeter, energy_between
from monitor.analysis.job_summary import JobSummarizer
from monitor.analysis.predict import JobShape
from monitor.compose import create_app
from monitor.config import MonitorConfig
from monitor.storage import Store, open_store
from monitor.storage.schema import JOB_SUMMARY
from monitor.web.context import get_context
from tests.monitor.history import NOW_NS, NOW_S, S, gpu_sample, job_events

WATTS = 300.0


def counter(at_s: float, watts: float = WATTS, offset_j: float = 5e6) -> float:
    """The total-energy counter of a GPU drawing `watts` steadily."""
    return offset_j + watts * (at_s - (NOW_S - 3600))


def readings(every_s: float, start_s: float, end_s: float) -> list[tuple[int, float]]:
    out, at = [], start_s
    while at <= end_s:
        out.append((int(at * S), counter(at)))
        at += every_s
    return out


def test_energy_is_the_counter_interpolated_at_both_ends_of_the_span() -> None:
    series = readings(10, NOW_S - 100, NOW_S)
    # 17.3 s between two readings at each end: 300 W x 17.3 s, whatever the cadence falls on.
    start, end = NOW_S - 71.2, NOW_S - 53.9
    assert energy_between(series, int(start * S), int(end * S), 120) == pytest.approx(WATTS * 17.3)


@pytest.mark.parametrize(
    ("case", "series"),
    [
        ("no reading before the start", readings(10, NOW_S - 60, NOW_S)),
        ("no reading after the end", readings(10, NOW_S - 100, NOW_S - 55)),
        ("a gap longer than allowed", [(int((NOW_S - 300) * S), 1.0), (int(NOW_S * S), 2.0)]),
        ("the counter went back (driver reload)", [(int((NOW_S - 80) * S), 9e6), (int((NOW_S - 40) * S), 1e3)]),
    ],
)
def test_energy_is_blank_rather_than_wrong(case: str, series: list[tuple[int, float]]) -> None:
    assert energy_between(series, int((NOW_S - 70) * S), int((NOW_S - 50) * S), 120) is None, case


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = open_store(f"sqlite:///{tmp_path}/monitor.db")
    yield opened
    opened.close()


def summarize(store: Store, meter: EnergyMeter | None = None) -> None:
    """Three jobs: 512p on GPU 0 (20 s), a failed one on GPU 0 (5 s), and one on a CPU."""
    events = job_events("gpu-job", submitted_s=NOW_S - 120, shape=JobShape(512, 16, 20), run_s=20.0, peak_bytes=1)
    events += job_events(
        "oom", submitted_s=NOW_S - 80, shape=JobShape(768, 16, 20), run_s=5.0, peak_bytes=None, status="failed"
    )
    events += job_events("cpu-job", submitted_s=NOW_S - 60, shape=JobShape(256, 8, 10), run_s=9.0, peak_bytes=None,
                         gpu="cpu")  # fmt: skip
    JobSummarizer(store.write, store, on_summary=meter.on_summary if meter else None).listen(events)


def summaries(store: Store) -> dict[str, dict]:
    points = store.query_points(JOB_SUMMARY, NOW_NS - 3600 * S, NOW_NS + 60 * S)
    return {str(p.fields["job_id"]): dict(p.fields) for p in points}


def test_the_meter_adds_energy_once_a_reading_follows_the_end(store: Store) -> None:
    now = {"ns": NOW_NS - 30 * S}
    meter = EnergyMeter(store, store.write, clock_ns=lambda: now["ns"])
    store.write([gpu_sample(used=1, at_ns=t, energy_j=e) for t, e in readings(10, NOW_S - 200, NOW_S - 95)])
    summarize(store, meter)
    assert meter.pending() == 2  # the two GPU jobs; the CPU job has no GPU energy
    meter.tick()
    assert meter.pending() == 2  # no reading after either end yet: they wait
    assert "energy_j" not in summaries(store)["gpu-job"]
    store.write([gpu_sample(used=1, at_ns=t, energy_j=e) for t, e in readings(10, NOW_S - 85, NOW_S - 5)])
    meter.tick()
    assert meter.pending() == 0
    jobs = summaries(store)
    assert jobs["gpu-job"]["energy_j"] == pytest.approx(WATTS * 20.0, rel=1e-6)
    assert jobs["gpu-job"]["gpu_seconds"] == pytest.approx(20.0)
    assert jobs["gpu-job"]["resolution"] == 512  # the rewrite merged into the summary, which kept its fields
    assert jobs["oom"]["energy_j"] == pytest.approx(WATTS * 5.0, rel=1e-6)
    assert "energy_j" not in jobs["cpu-job"]
    assert "gpu_seconds" not in jobs["cpu-job"]
    assert meter.measured_total == 2


def test_a_job_no_reading_follows_is_given_up_and_left_blank(store: Store) -> None:
    now = {"ns": NOW_NS}
    meter = EnergyMeter(store, store.write, clock_ns=lambda: now["ns"], give_up_s=180)
    summarize(store, meter)
    meter.tick()
    assert meter.pending() == 2
    now["ns"] += 181 * S
    meter.tick()
    assert meter.pending() == 0
    assert meter.unmeasured_total == 2
    assert "energy_j" not in summaries(store)["gpu-job"]


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    config = replace(
        MonitorConfig(),
        store_url=f"sqlite:///{tmp_path}/monitor.db",
        spool_dir=tmp_path / "spool",
        data_dir=tmp_path,
        price_per_kwh=0.30,
        price_per_gpu_hour=2.00,
    )
    served = create_app(config, clock_ns=lambda: NOW_NS)
    yield served
    get_context(served).close()


def test_jobs_csv_and_the_daily_report_carry_energy_gpu_time_and_cost(app: Flask) -> None:
    store = get_context(app).store
    meter = EnergyMeter(store, store.write, clock_ns=lambda: NOW_NS)
    store.write([gpu_sample(used=1, at_ns=t, energy_j=e) for t, e in readings(10, NOW_S - 200, NOW_S)])
    summarize(store, meter)
    meter.tick()
    client = app.test_client()

    text = client.get("/monitor/api/reports/jobs.csv?since=1h").get_data(as_text=True)
    jobs = {row["job_id"]: row for row in csv.DictReader(io.StringIO(text))}
    gpu_job = jobs["gpu-job"]
    energy = WATTS * 20.0  # 6,000 J = 1/600 kWh
    assert float(gpu_job["energy_j"]) == pytest.approx(energy, rel=1e-6)
    assert float(gpu_job["gpu_seconds"]) == pytest.approx(20.0)
    assert float(gpu_job["energy_cost"]) == pytest.approx(energy / 3.6e6 * 0.30, abs=1e-6)
    assert float(gpu_job["gpu_time_cost"]) == pytest.approx(20.0 / 3600 * 2.00, abs=1e-6)
    assert float(gpu_job["cost"]) == pytest.approx(0.0005 + 0.011111, abs=1e-5)
    assert (jobs["cpu-job"]["energy_j"], jobs["cpu-job"]["gpu_seconds"], jobs["cpu-job"]["cost"]) == ("", "", "")

    daily = client.get("/monitor/api/reports/aggregate.csv?since=1d&group_by=day,resolution").get_data(as_text=True)
    by_resolution = {row["resolution"]: row for row in csv.DictReader(io.StringIO(daily))}
    assert float(by_resolution["512"]["energy_j"]) == pytest.approx(energy, rel=1e-6)
    assert float(by_resolution["768"]["cost"]) == pytest.approx(1500 / 3.6e6 * 0.3 + 5 / 3600 * 2, abs=1e-4)
    assert by_resolution["768"]["failed"] == "1"
    assert (by_resolution["256"]["gpu_seconds"], by_resolution["256"]["energy_j"]) == ("0.0", "")  # a CPU job
    assert float(by_resolution["256"]["cost"]) == 0

    body = client.get("/monitor/api/reports/aggregate.json?since=1d&group_by=day,resolution").get_json()
    assert body["prices"] == {"per_kwh": 0.30, "per_gpu_hour": 2.00}
    assert body["columns"][:2] == ["day", "resolution"]
    row = next(r for r in body["rows"] if r["resolution"] == 512)
    assert row["day"] == "2024-05-01"
    assert row["jobs"] == 1
    assert row["cost"] == pytest.approx(float(by_resolution["512"]["cost"]))
    assert client.get("/monitor/api/reports/aggregate.json?group_by=prompt").status_code == 400


def test_prices_cost_each_part_known_and_nothing_without_a_price() -> None:
    assert Prices().cost(3.6e6, 3600) == (None, None, None)
    assert Prices(per_kwh=0.2).cost(3.6e6, 3600) == (pytest.approx(0.2), None, pytest.approx(0.2))
    assert Prices(per_gpu_hour=3.0).cost(None, 1800) == (None, pytest.approx(1.5), pytest.approx(1.5))
