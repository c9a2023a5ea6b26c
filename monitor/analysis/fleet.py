"""Each worker of the generator's fleet with its GPU as last sampled: what the dashboard's fleet panel shows.

The generator says which worker runs on which host and GPU; the samplers (one monitor per GPU host, all writing
to one store) say how that GPU is doing. A worker is matched to its card by the UUID it announced when it has
one (indexes can differ between the worker's CUDA and NVML), else by host and index. A GPU worker with no
sample in the last `MAX_SAMPLE_AGE_S` gets a note saying so: its host's monitor is away or samples under
another host name.
"""

from __future__ import annotations

from typing import Any

from common.units import NS_PER_S
from monitor.analysis.devices import MAX_SAMPLE_AGE_S
from monitor.storage.base import Store
from monitor.storage.schema import GPU_SAMPLE

SAMPLE_FIELDS = ("utilization_ratio", "memory_used_bytes", "memory_total_bytes", "temperature_c", "power_w")


def latest_sample(store: Store, tags: dict[str, str], now_ns: int) -> dict[str, Any] | None:
    """Return the newest up sample matching `tags` in the last `MAX_SAMPLE_AGE_S`, as the panel shows it."""
    start_ns = now_ns - MAX_SAMPLE_AGE_S * NS_PER_S
    for point in store.query_points(GPU_SAMPLE, start_ns, now_ns + NS_PER_S, tags=tags, limit=8, descending=True):
        if point.fields.get("up") is False:
            continue
        name = point.fields.get("name")
        return {
            "uuid": point.tags.get("uuid"),
            "name": name if isinstance(name, str) and name else None,
            "sample_age_s": round(max(now_ns - point.time_ns, 0) / NS_PER_S, 1),
            **{field: point.fields.get(field) for field in SAMPLE_FIELDS},
        }
    return None


def with_gpu_samples(view: dict[str, Any], store: Store, now_ns: int) -> dict[str, Any]:
    """Return the generator's fleet view with each GPU worker's latest sample (`device`) and a note when none."""
    workers = []
    for worker in view.get("workers", []):
        worker = dict(worker)
        host, gpu, uuid = str(worker.get("host") or ""), str(worker.get("gpu") or ""), worker.get("gpu_uuid")
        worker["device"], worker["device_note"] = None, None
        if gpu.isdigit():
            sample = latest_sample(store, {"host": host, "uuid": uuid} if uuid else {"host": host, "gpu": gpu}, now_ns)
            if sample is None and uuid:  # a sampler whose NVML has no UUID for the card tags none
                sample = latest_sample(store, {"host": host, "gpu": gpu}, now_ns)
            if sample is None:
                worker["device_note"] = (
                    f"no sample of GPU {gpu} on {host} in the last {MAX_SAMPLE_AGE_S} s: is a monitor running on "
                    f"that host, with the same host name (I2V_HOST_NAME)?"
                )
            else:
                worker["device"] = sample
                worker["gpu_uuid"] = uuid or sample["uuid"]
                worker["gpu_name"] = worker.get("gpu_name") or sample["name"]
        workers.append(worker)
    return {**view, "workers": workers}
