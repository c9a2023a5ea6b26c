"""Which hosts the monitor knows of, from both sides: those that sent samples and those that ran jobs.

A host tag set differently on the generator and the monitor splits one machine in two: its jobs under one
name, its samples under another. These reads let the API say so instead of answering with empty views.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from monitor.storage.base import Store
from monitor.storage.schema import GPU_SAMPLE, HOST_SAMPLE, JOB_SUMMARY

#: How many job summaries are read to learn the job hosts of a window (newest first): hosts are few.
MAX_JOB_POINTS = 5000


@dataclass(frozen=True)
class KnownHosts:
    """The hosts seen in a window, by what they sent."""

    sampled: frozenset[str]
    with_jobs: frozenset[str]
    gpus: dict[str, frozenset[str]] = field(default_factory=dict)

    @property
    def all(self) -> frozenset[str]:
        """Return every host seen, by samples or by jobs."""
        return self.sampled | self.with_jobs

    def mismatch(self, this_host: str) -> list[str]:
        """Return the hosts that ran jobs but sent no samples: a generator whose host name this monitor lacks."""
        return sorted(self.with_jobs - self.sampled - {this_host})


def known_hosts(store: Store, start_ns: int, end_ns: int) -> KnownHosts:
    """Read the hosts that sent samples or finished jobs in [start_ns, end_ns), with each host's GPUs."""
    bucket_s = max((end_ns - start_ns) // 1_000_000_000, 1)
    sampled: set[str] = set()
    gpus: dict[str, set[str]] = {}
    for measurement, sample_fields in (
        (HOST_SAMPLE, ["cpu_ratio", "memory_total_bytes"]),
        (GPU_SAMPLE, ["memory_total_bytes", "utilization_ratio"]),
    ):
        for row in store.query_window(measurement, sample_fields, start_ns, end_ns, bucket_s=bucket_s):
            host = row.tags.get("host")
            if not host:
                continue
            sampled.add(host)
            if measurement == GPU_SAMPLE and row.tags.get("gpu"):
                gpus.setdefault(host, set()).add(row.tags["gpu"])
    jobs = store.query_points(JOB_SUMMARY, start_ns, end_ns, limit=MAX_JOB_POINTS, descending=True)
    with_jobs = {p.tags["host"] for p in jobs if p.tags.get("host")}
    return KnownHosts(frozenset(sampled), frozenset(with_jobs), {h: frozenset(g) for h, g in gpus.items()})
