"""A job's summary keeps its peak memory three ways: torch's reserved (learned from), allocated, and NVML's."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from monitor.analysis.job_summary import JobSummarizer
from monitor.analysis.scaling import JobShape
from monitor.storage import Store
from monitor.storage.schema import JOB_SUMMARY
from tests.monitor.history import NOW_NS, NOW_S, S, each_store, gpu_sample, job_events

GB = 10**9


@pytest.fixture(params=["sqlite", "influxdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    yield from each_store(request, tmp_path)


def test_the_summary_keeps_the_generators_peaks_and_nvmls_peak_over_the_jobs_span(store: Store) -> None:
    submitted_s, queued_s, run_s = NOW_S - 100, 2.0, 20.0
    running_ns, end_ns = int((submitted_s + queued_s) * S), int((submitted_s + queued_s + run_s) * S)
    samples = [
        (running_ns - 3 * S, 28 * GB),  # the job before, still holding its cache: not this job's
        (running_ns + 1 * S, 6 * GB),
        (running_ns + 9 * S, 9 * GB + 512),
        (end_ns - 1 * S, 8 * GB),
        (end_ns + 2 * S, 27 * GB),  # the next job
    ]
    store.write([gpu_sample(used=40 * GB, own=own, at_ns=at_ns) for at_ns, own in samples])
    events = job_events(
        "small-after-big",
        submitted_s=submitted_s,
        queued_s=queued_s,
        shape=JobShape(512, 16, 25),
        run_s=run_s,
        peak_bytes=8_100_000_000,
    )
    events = [
        replace(e, peak_memory_allocated_bytes=7_300_000_000) if e.peak_memory_bytes is not None else e for e in events
    ]

    JobSummarizer(store.write, store).listen(events)

    [summary] = store.query_points(JOB_SUMMARY, NOW_NS - 3600 * S, NOW_NS)
    assert summary.fields["peak_memory_bytes"] == 8_100_000_000
    assert summary.fields["peak_memory_allocated_bytes"] == 7_300_000_000
    assert summary.fields["nvml_peak_memory_bytes"] == 9 * GB + 512


def test_without_samples_or_on_a_cpu_nvmls_peak_is_left_empty(store: Store) -> None:
    on_cpu = job_events(
        "cpu", submitted_s=NOW_S - 100, shape=JobShape(256, 8, 10), run_s=5.0, peak_bytes=None, gpu="cpu"
    )
    unsampled = job_events("gpu", submitted_s=NOW_S - 50, shape=JobShape(256, 8, 10), run_s=5.0, peak_bytes=6 * GB)

    JobSummarizer(store.write, store).listen(on_cpu + unsampled)

    summaries = {p.fields["job_id"]: p.fields for p in store.query_points(JOB_SUMMARY, NOW_NS - 3600 * S, NOW_NS)}
    assert summaries["cpu"].get("nvml_peak_memory_bytes") is None
    assert summaries["gpu"].get("nvml_peak_memory_bytes") is None
    assert summaries["gpu"]["peak_memory_bytes"] == 6 * GB
