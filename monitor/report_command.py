"""`python -m monitor report jobs|gpu ...`: write a CSV report from the store to a file or standard output."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from common.redact import redact_url
from monitor.analysis import columns
from monitor.analysis.aggregate import GROUP_KEYS, parse_group_by, write_aggregate
from monitor.analysis.cost import Prices
from monitor.analysis.reports import write_report
from monitor.config import ConfigError, MonitorConfig
from monitor.storage import open_store
from monitor.storage.base import StoreRejected, StoreUnavailable
from monitor.web import params


def check_store_exists(store_url: str) -> None:
    """Raise ValueError saying what to pass when a SQLite store does not exist: a report never creates one."""
    if not store_url.startswith("sqlite:///"):
        return
    path = Path(store_url.removeprefix("sqlite:///"))
    if not path.is_file():
        raise ValueError(
            f"no store at {path}: pass --store sqlite:///PATH or --data-dir DIR (the monitor's; it holds "
            "monitor.db), or run the report where the monitor keeps var/monitor"
        )


def main(argv: Sequence[str]) -> int:
    """Write the report the arguments ask for; return the exit status (2: bad arguments or store)."""
    parser = argparse.ArgumentParser(prog="python -m monitor report", description="Write a CSV report.")
    parser.add_argument(
        "kind",
        choices=("jobs", "gpu", "hosts", "aggregate"),
        help="jobs: a row per job; gpu: a row per bucket and GPU; hosts: a row per bucket and host; "
        "aggregate: a row per group of jobs "
        "(`report columns` prints what every column means)",
    )
    parser.add_argument(
        "--group-by", help=f"aggregate's groups, among {', '.join(GROUP_KEYS)} (default day,resolution)"
    )
    parser.add_argument(
        "--since", help="24h, 7d, a date, an RFC 3339 time or epoch seconds (default 24h; with --until alone, all)"
    )
    parser.add_argument("--until", default="now", help="as --since (default now)")
    parser.add_argument("--host", help="only this host")
    parser.add_argument("--bucket", default="1m", help="gpu and hosts reports' bucket: 10s, 1m, 1h (default 1m)")
    parser.add_argument("-o", "--output", default="-", help="file to write (default: standard output)")
    parser.add_argument("--store", help="the store URL (default: as python -m monitor: MONITOR_STORE, ...)")
    parser.add_argument("--data-dir", help="the monitor's data folder, whose monitor.db is read (default var/monitor)")
    if argv[:1] == ["columns"]:  # the column dictionary, as docs/reports.md holds it
        print(columns.markdown(), end="")
        return 0
    args = parser.parse_args(argv)
    sources = [
        *(["--store", args.store] if args.store else []),
        *(["--data-dir", args.data_dir] if args.data_dir else []),
    ]
    until_given = args.until != "now"
    try:
        config = MonitorConfig.from_sources(sources).validate()
        start_ns, end_ns = params.span_ns(args.since, args.until if until_given else None, time.time_ns())
        bucket_s, host = params.bucket_s(args.bucket), params.name(args.host, "host")
        group_by = parse_group_by(args.group_by)
        check_store_exists(config.store_url)
        store = open_store(config.store_url)
    except (ConfigError, ValueError, StoreUnavailable) as e:
        print(f"monitor report: {e}", file=sys.stderr)
        return 2
    where_from = redact_url(config.store_url)

    prices = Prices(config.price_per_kwh, config.price_per_gpu_hour)

    def write(out: TextIO) -> int:
        if args.kind == "aggregate":
            return write_aggregate(store, out, start_ns, end_ns, group_by, host, prices)
        return write_report(args.kind, store, out, start_ns, end_ns, host=host, bucket_s=bucket_s, prices=prices)

    try:
        if args.output == "-":
            rows = write(sys.stdout)
        else:
            with Path(args.output).open("w", encoding="utf-8", newline="") as out:
                rows = write(out)
    except (StoreUnavailable, StoreRejected) as e:
        print(
            f"monitor report: the store {where_from} failed mid-report ({e}); the output is incomplete", file=sys.stderr
        )
        return 1
    finally:
        store.close()
    where = "standard output" if args.output == "-" else args.output
    print(f"monitor report: {rows} {args.kind} row(s) from {where_from} to {where}", file=sys.stderr)
    return 0
