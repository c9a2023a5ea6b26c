"""The report routes under /monitor/api/reports: jobs, GPU, host and aggregate CSVs, streamed as they are read, and
the aggregate as JSON for the dashboard's daily chart. Costs use the monitor's configured prices."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request
from flask.typing import ResponseReturnValue

from monitor.analysis import columns
from monitor.analysis.aggregate import VALUE_COLUMNS, GroupingError, aggregate_groups, aggregate_rows, parse_group_by
from monitor.analysis.cost import Prices
from monitor.analysis.hosts import known_hosts
from monitor.analysis.reports import GPU_COLUMNS, HOST_COLUMNS, JOB_COLUMNS, csv_chunks, gpu_rows, host_rows, job_rows
from monitor.web import params
from monitor.web.context import get_context
from monitor.web.viewer import viewer

bp = Blueprint("reports", __name__, url_prefix="/monitor/api/reports")


class UnknownHost(LookupError):
    """A host filter naming a host the span never saw."""


@bp.errorhandler(UnknownHost)
def _unknown_host(error: UnknownHost) -> ResponseReturnValue:
    return jsonify(error=str(error)), 404


def init_app(app: Flask) -> None:
    """Register the report routes."""
    app.register_blueprint(bp)


def _host(start_ns: int, end_ns: int) -> str | None:
    """Read the `host` filter; a host that neither sent samples nor ran jobs in the span is refused as unknown
    (404), so a mistyped or split host name is never answered with an empty report."""
    host = params.arg_name("host")
    if host is None:
        return None
    seen = known_hosts(get_context().store, start_ns, end_ns)
    if host not in seen.all:
        known = ", ".join(sorted(seen.all)) or "none"
        raise UnknownHost(f"unknown host {host!r}: no samples and no jobs in the span; hosts seen then: {known}")
    return host


def _prices() -> Prices:
    config = get_context().config
    return Prices(config.price_per_kwh, config.price_per_gpu_hour)


def _stream(name: str, header: Sequence[str], rows: Iterator[list[Any]]) -> Response:
    chunks = csv_chunks(header, rows)
    first = next(chunks)  # the first page is read here, so a store that is down answers 503, not a cut CSV
    body = (chunk.encode("utf-8") for part in ([first], chunks) for chunk in part)
    response = Response(body, mimetype="text/csv")
    response.headers["Content-Type"] = "text/csv; charset=utf-8; header=present"
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/jobs.csv")
@viewer  # prompts, errors and clip paths
def jobs_csv() -> ResponseReturnValue:
    """Stream one CSV row per job that ended in the span."""
    ctx = get_context()
    start_ns, end_ns = params.span_ns(request.args.get("since"), request.args.get("until"), ctx.clock_ns())
    host = _host(start_ns, end_ns)
    return _stream("jobs.csv", JOB_COLUMNS, job_rows(ctx.store, start_ns, end_ns, host, prices=_prices()))


@bp.get("/gpu.csv")
@viewer
def gpu_csv() -> ResponseReturnValue:
    """Stream one CSV row per bucket, host and GPU in the span."""
    ctx = get_context()
    start_ns, end_ns = params.span_ns(request.args.get("since"), request.args.get("until"), ctx.clock_ns())
    bucket_s = params.bucket_s(request.args.get("bucket"))
    host = _host(start_ns, end_ns)
    return _stream("gpu.csv", GPU_COLUMNS, gpu_rows(ctx.store, start_ns, end_ns, bucket_s, host))


@bp.get("/hosts.csv")
def hosts_csv() -> ResponseReturnValue:
    """Stream one CSV row per bucket and host in the span: the host's CPU, memory, generator RSS and free disk."""
    ctx = get_context()
    start_ns, end_ns = params.span_ns(request.args.get("since"), request.args.get("until"), ctx.clock_ns())
    bucket_s = params.bucket_s(request.args.get("bucket"))
    host = _host(start_ns, end_ns)
    return _stream("hosts.csv", HOST_COLUMNS, host_rows(ctx.store, start_ns, end_ns, bucket_s, host))


def _aggregate_args() -> tuple[int, int, tuple[str, ...], str | None]:
    ctx = get_context()
    start_ns, end_ns = params.span_ns(request.args.get("since"), request.args.get("until"), ctx.clock_ns())
    try:
        group_by = parse_group_by(request.args.get("group_by"))
    except GroupingError as e:
        raise params.BadRequest(str(e)) from None
    return start_ns, end_ns, group_by, _host(start_ns, end_ns)


@bp.get("/aggregate.csv")
def aggregate_csv() -> ResponseReturnValue:
    """Stream one CSV row per group (`group_by`, default day,resolution) of the jobs that ended in the span."""
    start_ns, end_ns, group_by, host = _aggregate_args()
    rows = aggregate_rows(get_context().store, start_ns, end_ns, group_by, host, prices=_prices())
    return _stream("aggregate.csv", (*group_by, *VALUE_COLUMNS), rows)


@bp.get("/aggregate.json")
def aggregate_json() -> ResponseReturnValue:
    """Return the aggregate report's rows as JSON objects (the dashboard's daily chart), with the prices used."""
    start_ns, end_ns, group_by, host = _aggregate_args()
    header = (*group_by, *VALUE_COLUMNS)
    groups = aggregate_groups(get_context().store, start_ns, end_ns, group_by, host, prices=_prices())
    return jsonify(
        columns=list(header),
        rows=[dict(zip(header, (*key, *values), strict=True)) for key, values in groups],
        prices=_prices().to_dict(),
    )


@bp.get("/columns")
def column_dictionary() -> ResponseReturnValue:
    """Return every report's columns: unit, meaning, and when a value is blank and why."""
    return jsonify(columns.as_json())
