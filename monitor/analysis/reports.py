"""CSV reports, per job and per GPU time bucket: the rows and their cells, served over HTTP and the command line.

- `GET /monitor/api/reports/jobs.csv?since=24h&until=&host=`: one row per job that ended in [since, until)
  (its `job_summary` point, see monitor/analysis/job_summary.py), oldest first, with its energy, GPU time and
  cost at the configured prices (monitor/analysis/cost.py), and its quality scores and rating when they were
  recorded within `QUALITY_LAG_S` of its end.
- `GET /monitor/api/reports/gpu.csv?since=24h&until=&bucket=1m&host=`: per bucket, host and GPU, the mean
  and max of utilisation, memory used, temperature and power (buckets start at multiples of `bucket`).
- `python -m monitor report jobs|gpu --since 24h [--until T] [--host H] [--bucket 1m] [-o report.csv]`.

`since` and `until` are a duration before now (`90s`, `15m`, `24h`, `7d`), `now`, or an RFC 3339 time with
its zone (`2024-05-01T00:00:00Z`). The format: RFC 4180 (comma, CRLF line ends, double quotes around a cell
with a comma, quote or line break, quotes doubled), UTF-8, one header row, RFC 3339 UTC timestamps with
microseconds. A text cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return gets a leading `'`,
so a spreadsheet shows it instead of running it as a formula (OWASP's CSV injection advice); numbers are
left as numbers. Rows are streamed: the store is read in pages (monitor/storage/pages.py), whatever the window.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from typing import Any, TextIO

from common.events import PARAM_NAMES
from common.units import NS_PER_S
from monitor.analysis.cost import NO_PRICES, Prices, energy_of, gpu_seconds_of, rounded
from monitor.analysis.devices import ModelNames
from monitor.analysis.job_summary import STAGES
from monitor.storage.base import Point, Store
from monitor.storage.pages import PAGE_SIZE, iter_points
from monitor.storage.schema import GPU_SAMPLE, HOST_SAMPLE, JOB_SUMMARY, QUALITY

QUALITY_LAG_S = 3600
ROWS_PER_CHUNK = 1000
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

QUALITY_COLUMNS = (
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
    "parts_used",  # the text columns last: job_row writes them after the numbers
    "clip_reason",
    "unscorable_reason",
)
_QUALITY_TEXT = ("parts_used", "clip_reason", "unscorable_reason")
COST_COLUMNS = ("energy_cost", "gpu_time_cost", "cost")  # computed when read, at the configured prices
JOB_COLUMNS = (
    "job_id",
    "host",
    "gpu",
    "gpu_model",
    "status",
    "submitted_at",
    "started_at",
    "finished_at",
    "queued_s",
    "run_s",
    "total_s",
    *(f"requested_{name}" for name in PARAM_NAMES),
    *PARAM_NAMES,
    *(f"{stage}_s" for stage in STAGES),
    "denoising_steps",
    "mean_step_s",
    "median_step_s",
    "first_step_s",
    "warmup_s",
    "first_at_size",
    "peak_memory_bytes",
    "peak_memory_allocated_bytes",
    "nvml_peak_memory_bytes",
    "energy_j",
    "gpu_seconds",
    *COST_COLUMNS,
    *QUALITY_COLUMNS,
    "prompt",
    "error",
    "suggestion",
    "video_path",
)
_JOB_COMPUTED = ("energy_j", "gpu_seconds", *COST_COLUMNS)  # read with a fallback, or priced, in job_row
_JOB_TEXT = ("prompt", "error", "suggestion", "video_path")
_JOB_NUMBERS = tuple(c for c in JOB_COLUMNS[8:] if c not in (*_JOB_TEXT, *_JOB_COMPUTED, *QUALITY_COLUMNS))
GPU_FIELDS = ("utilization_ratio", "memory_used_bytes", "temperature_c", "power_w")
GPU_COLUMNS = (
    "bucket_start",
    "host",
    "gpu",
    "gpu_model",
    "samples",
    *(f"{name}_{agg}" for name in GPU_FIELDS for agg in ("mean", "max")),
    "memory_total_bytes_max",
)
HOST_FIELDS = ("cpu_ratio", "memory_used_bytes", "generator_rss_bytes", "outputs_disk_free_bytes")
HOST_COLUMNS = (
    "bucket_start",
    "host",
    "samples",
    *(f"{name}_{agg}" for name in HOST_FIELDS for agg in ("mean", "max")),
    "memory_total_bytes_max",
)

# ---- cells ------------------------------------------------------------------------------------------------


def text_cell(value: object) -> str:
    """Format a text cell, defusing a leading formula character with `'` (OWASP)."""
    if value is None:
        return ""
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def number_cell(value: object) -> str:
    """Format a number as itself (shortest round-trip form for floats), a boolean as true/false, None as empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return text_cell(value)  # a value of another type in a numeric column is text, defused like any text


@lru_cache(maxsize=4096)
def _second(epoch_s: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_s))


def time_cell(us: object) -> str:
    """Format epoch microseconds as RFC 3339 UTC with microseconds (empty when unknown)."""
    if not isinstance(us, int) or isinstance(us, bool):
        return ""
    seconds, micro = divmod(us, 1_000_000)
    return f"{_second(seconds)}.{micro:06d}Z"


def csv_chunks(header: Sequence[str], rows: Iterator[list[Any]], rows_per_chunk: int = ROWS_PER_CHUNK) -> Iterator[str]:
    """Yield RFC 4180 text: the header row, then the rows, a chunk of `rows_per_chunk` rows at a time."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    for count, row in enumerate(rows, 1):
        writer.writerow(row)
        if count % rows_per_chunk == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


# ---- jobs -------------------------------------------------------------------------------------------------


class QualityJoin:
    """Join each job with its latest quality point, reading quality points once, in step with the jobs.

    Quality is scored after a job ends, so for a job that ended at t the quality points up to t + lag are read
    ahead (later points win: a rating comes after the scores); points older than the jobs being read are
    forgotten, so what is held covers one lag's worth of jobs whatever the report's length.
    """

    def __init__(self, points: Iterator[Point], lag_ns: int) -> None:
        """Read from `points` (oldest first)."""
        self._points, self._lag_ns = points, lag_ns
        self._next = next(self._points, None)
        self._latest: dict[str, tuple[int, dict[str, Any]]] = {}
        self._taken = 0

    def take(self, job_id: str, ended_ns: int) -> Mapping[str, Any]:
        """Return the quality fields of the job that ended at `ended_ns` ({} when none were recorded)."""
        horizon = ended_ns + self._lag_ns
        while self._next is not None and self._next.time_ns < horizon:
            owner = self._next.fields.get("job_id")
            if isinstance(owner, str):
                fields = dict(self._next.fields)
                if fields.get("rating") is None:  # scored, not (yet) rated: the score a rating later changes
                    fields["combined_before_rating"] = fields.get("combined")
                else:
                    before = self._latest.get(owner, (0, {}))[1].get("combined_before_rating")
                    fields["combined_before_rating"] = before
                self._latest[owner] = (self._next.time_ns, fields)
            self._next = next(self._points, None)
        self._taken += 1
        if self._taken % 1000 == 0:  # forget what no later job can own (allowing for clock skew)
            oldest = ended_ns - self._lag_ns
            self._latest = {k: v for k, v in self._latest.items() if v[0] >= oldest}
        found = self._latest.pop(job_id, None)
        return {} if found is None else found[1]


_PLAIN = frozenset((int, float, type(None)))


def _numbers(values: list[Any]) -> list[Any]:
    """Pass ints, floats and None through (the csv module writes them as themselves, None as empty)."""
    if set(map(type, values)) <= _PLAIN:
        return values
    return [v if type(v) in _PLAIN else number_cell(v) for v in values]


def job_row(point: Point, gpu_model: str, quality: Mapping[str, Any], prices: Prices = NO_PRICES) -> list[Any]:
    """Format one `job_summary` point, its cost and its quality as a jobs.csv row (JOB_COLUMNS order)."""
    f = point.fields
    tags = point.tags
    get = f.get
    energy, gpu_seconds = energy_of(f), gpu_seconds_of(f, tags.get("gpu", ""))
    costs = [rounded(c) for c in prices.cost(energy, gpu_seconds)]
    return [
        text_cell(get("job_id")),
        text_cell(tags.get("host")),
        text_cell(tags.get("gpu")),
        text_cell(gpu_model),
        text_cell(tags.get("status")),
        time_cell(get("submitted_at_us")),
        time_cell(get("started_at_us")),
        time_cell(point.time_ns // 1000),
        *_numbers([get(name) for name in _JOB_NUMBERS]),
        energy,
        gpu_seconds,
        *costs,
        *_numbers([quality.get(name) for name in QUALITY_COLUMNS if name not in _QUALITY_TEXT]),
        *(text_cell(quality.get(name)) for name in _QUALITY_TEXT),
        text_cell(get("prompt")),
        text_cell(get("error")),
        text_cell(get("suggestion")),
        text_cell(get("video_path")),
    ]


def job_rows(
    store: Store,
    start_ns: int,
    end_ns: int,
    host: str | None = None,
    *,
    page_size: int = PAGE_SIZE,
    prices: Prices = NO_PRICES,
) -> Iterator[list[Any]]:
    """Yield a row per job that ended in [start_ns, end_ns), oldest first, reading the store in pages."""
    tags = {"host": host} if host else None
    names = ModelNames(store, end_ns)
    lag_ns = QUALITY_LAG_S * NS_PER_S
    quality = QualityJoin(iter_points(store, QUALITY, start_ns, end_ns + lag_ns, page_size=page_size), lag_ns)
    for point in iter_points(store, JOB_SUMMARY, start_ns, end_ns, tags=tags, page_size=page_size):
        job_id = point.fields.get("job_id")
        scores = quality.take(job_id, point.time_ns) if isinstance(job_id, str) else {}
        yield job_row(point, names.name(point.tags.get("host", ""), point.tags.get("gpu", "")), scores, prices)


# ---- GPU buckets ------------------------------------------------------------------------------------------


def gpu_rows(
    store: Store, start_ns: int, end_ns: int, bucket_s: int, host: str | None = None, *, buckets_per_query: int = 500
) -> Iterator[list[Any]]:
    """Yield a row per bucket, host and GPU, by time, querying `buckets_per_query` buckets at a time.

    The first bucket starts at `start_ns` rounded down to a multiple of `bucket_s`, so every bucket is whole.
    """
    bucket_ns = bucket_s * NS_PER_S
    names = ModelNames(store, end_ns)
    tags = {"host": host} if host else None
    fields = [*GPU_FIELDS, "memory_total_bytes"]
    cursor = start_ns - start_ns % bucket_ns
    while cursor < end_ns:
        until = min(cursor + buckets_per_query * bucket_ns, end_ns)
        rows = store.query_window(GPU_SAMPLE, fields, cursor, until, tags=tags, bucket_s=bucket_s)
        rows.sort(key=lambda r: (r.time_ns, r.tags.get("host", ""), r.tags.get("gpu", "")))
        for row in rows:
            host_name, gpu = row.tags.get("host", ""), row.tags.get("gpu", "")
            yield [
                time_cell(row.time_ns // 1000),
                text_cell(host_name),
                text_cell(gpu),
                text_cell(names.name(host_name, gpu)),
                number_cell(row.samples),
                *(number_cell(getattr(row, agg).get(name)) for name in GPU_FIELDS for agg in ("mean", "max")),
                number_cell(row.max.get("memory_total_bytes")),
            ]
        cursor = until


def host_rows(
    store: Store, start_ns: int, end_ns: int, bucket_s: int, host: str | None = None, *, buckets_per_query: int = 500
) -> Iterator[list[Any]]:
    """Yield a row per bucket and host by time: CPU, memory, the generator's RSS and the outputs disk's free space."""
    bucket_ns = bucket_s * NS_PER_S
    tags = {"host": host} if host else None
    fields = [*HOST_FIELDS, "memory_total_bytes"]
    cursor = start_ns - start_ns % bucket_ns
    while cursor < end_ns:
        until = min(cursor + buckets_per_query * bucket_ns, end_ns)
        rows = store.query_window(HOST_SAMPLE, fields, cursor, until, tags=tags, bucket_s=bucket_s)
        rows.sort(key=lambda r: (r.time_ns, r.tags.get("host", "")))
        for row in rows:
            yield [
                time_cell(row.time_ns // 1000),
                text_cell(row.tags.get("host", "")),
                number_cell(row.samples),
                *(number_cell(getattr(row, agg).get(name)) for name in HOST_FIELDS for agg in ("mean", "max")),
                number_cell(row.max.get("memory_total_bytes")),
            ]
        cursor = until


def write_report(kind: str, store: Store, out: TextIO, start_ns: int, end_ns: int, **options: Any) -> int:
    """Write a jobs, gpu or hosts report to `out`; return the number of rows."""
    host, bucket_s = options.get("host"), options.get("bucket_s", 60)
    if kind == "jobs":
        header, rows = JOB_COLUMNS, job_rows(store, start_ns, end_ns, host, prices=options.get("prices", NO_PRICES))
    elif kind == "hosts":
        header, rows = HOST_COLUMNS, host_rows(store, start_ns, end_ns, bucket_s, host)
    else:
        header, rows = GPU_COLUMNS, gpu_rows(store, start_ns, end_ns, bucket_s, host)
    counted = 0

    def counting(source: Iterator[list[Any]]) -> Iterator[list[Any]]:
        nonlocal counted
        for row in source:
            counted += 1
            yield row

    for chunk in csv_chunks(header, counting(rows)):
        out.write(chunk)
    return counted
