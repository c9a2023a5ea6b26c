"""The fleet view and the advice routes of queue mode's API, and the monitor reading them, on a real redis-server.

No model and no worker process here (the API of queue mode runs none, so these start in a second): the workers
are announced in Redis as a worker's housekeeping announces itself (`RedisJobStore.register_worker`). The real
worker processes' announcements, states and jobs are in test_fleet.py.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from monitor.storage.base import Point
from monitor.storage.schema import GPU_SAMPLE
from monitor.web.context import get_context
from tests.fleet.conftest import Served, announce, monitor_for, queue_api
from tests.generator.conftest import SMALL_JOB, png_bytes
from tests.servers import RedisServer, free_port

UUID = "GPU-5f1a2b3c-0000-1111-2222-333344445555"
GiB = 2**30


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server for each test (announcements and jobs do not leak between them)."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def api(tmp_path: Path, redis: RedisServer) -> Iterator[Served]:
    """Queue mode's API without a monitor."""
    with queue_api(tmp_path / "api", redis.url) as served:
        yield served


def submit(url: str, **fields: str) -> requests.Response:
    """POST the smallest job."""
    files = {"image": ("input.png", io.BytesIO(png_bytes()), "image/png")}
    return requests.post(f"{url}/api/jobs", data={**SMALL_JOB, **fields}, files=files, timeout=10)


def test_the_fleet_view_lists_announced_workers_and_the_queue_per_priority(api: Served, redis: RedisServer) -> None:
    empty = requests.get(f"{api.url}/api/fleet", timeout=10).json()
    assert empty["workers"] == []
    assert empty["queue"]["mode"] == "queue"
    assert [p["priority"] for p in empty["queue"]["priorities"]] == ["high", "normal", "batch"]
    assert empty["heartbeat_interval_s"] == 1.0  # a third of the 3 s lease

    announce(redis.url, "b-gpu0", host="host-b", gpu="0", gpu_name="NVIDIA H200", gpu_uuid=UUID, job_id="j1")
    announce(redis.url, "a-gpu1", host="host-a", gpu="1", seen_at=time.time() - 2.5)
    announce(redis.url, "a-gpu0", host="host-a", gpu="0", ready=False)
    announce(redis.url, "a-gpu2", host="host-a", gpu="2", ready=False, error="OSError: no weights")
    assert submit(api.url).status_code == 202
    assert submit(api.url, priority="batch").status_code == 202

    view = requests.get(f"{api.url}/api/fleet", timeout=10).json()
    rows = [(w["host"], w["gpu"], w["state"], w["job_id"]) for w in view["workers"]]
    assert rows == [
        ("host-a", "0", "loading", None),
        ("host-a", "1", "idle", None),
        ("host-a", "2", "failed", None),
        ("host-b", "0", "busy", "j1"),
    ]
    busy = view["workers"][3]
    assert (busy["gpu_name"], busy["gpu_uuid"], busy["model"], busy["name"]) == ("NVIDIA H200", UUID, "tiny", "b-gpu0")
    assert 2.4 <= view["workers"][1]["heartbeat_age_s"] < 30
    assert view["workers"][2]["error"] == "OSError: no weights"
    depth = {p["priority"]: (p["pending"], p["oldest_age_s"]) for p in view["queue"]["priorities"]}
    assert depth["high"] == (0, None)
    assert depth["normal"][0] == depth["batch"][0] == 1
    assert depth["normal"][1] >= 0
    assert view["queue"]["pending"] == 2


def test_redis_away_is_a_503_with_the_reason_and_the_page_still_serves(api: Served, redis: RedisServer) -> None:
    redis.kill()
    answer = requests.get(f"{api.url}/api/fleet", timeout=15)
    assert answer.status_code == 503
    assert "Redis" in answer.json()["error"]
    assert requests.get(api.url, timeout=15).status_code == 200


def test_advice_in_queue_mode_asks_the_monitor_about_the_roomiest_ready_worker(
    tmp_path: Path, redis: RedisServer
) -> None:
    with monitor_for(tmp_path / "monitor", None) as monitor, queue_api(tmp_path / "api", redis.url, monitor.url) as api:
        # No worker yet: a clear 503, not the IndexError's 500 of an API that looked for a local GPU.
        refused = requests.get(f"{api.url}/api/recommendation", timeout=10)
        assert refused.status_code == 503
        assert "no worker is ready" in refused.json()["error"]
        assert requests.get(f"{api.url}/api/predict?resolution=256&frames=8&steps=10", timeout=10).status_code == 503

        store = get_context(monitor.app).store
        now = time.time_ns()
        for host, total in (("host-a", 24 * GiB), ("host-b", 80 * GiB)):
            fields = {"name": f"GPU of {host}", "memory_total_bytes": total, "memory_used_bytes": GiB, "up": True}
            store.write([Point(GPU_SAMPLE, {"host": host, "gpu": "0"}, fields, now)])
        announce(redis.url, "a", host="host-a", gpu="0", usable_bytes=19 * GiB)
        announce(redis.url, "b", host="host-b", gpu="0", usable_bytes=64 * GiB)
        announce(redis.url, "c", host="host-c", gpu="0", usable_bytes=140 * GiB, ready=False)  # still loading

        default = requests.get(f"{api.url}/api/recommendation", timeout=10)
        assert default.status_code == 200, default.text
        assert default.json()["gpu"]["host"] == "host-b"  # the most memory among the ready ones
        picked = requests.get(f"{api.url}/api/recommendation?host=host-a&gpu=0", timeout=10)
        assert picked.status_code == 200, picked.text
        assert picked.json()["gpu"]["host"] == "host-a"
        predicted = requests.get(f"{api.url}/api/predict?resolution=256&frames=8&steps=10&host=host-a", timeout=10)
        assert predicted.status_code == 200, predicted.text
        assert predicted.json()["gpu"]["host"] == "host-a"
        unknown = requests.get(f"{api.url}/api/recommendation?host=host-c&gpu=0", timeout=10)
        assert unknown.status_code == 400
        assert unknown.json()["error"] == "gpu and host must name one of the fleet's ready workers': host-b/0, host-a/0"
        redis.kill()
        away = requests.get(f"{api.url}/api/recommendation", timeout=15)
        assert away.status_code == 503
        assert "Redis" in away.json()["error"]


def test_the_monitor_reads_the_fleet_adds_each_gpus_sample_and_says_why_when_it_cannot(
    tmp_path: Path, redis: RedisServer
) -> None:
    with queue_api(tmp_path / "api", redis.url) as api, monitor_for(tmp_path / "monitor", api.url) as monitor:
        store = get_context(monitor.app).store
        fields = {"name": "NVIDIA H200", "memory_total_bytes": 140 * GiB, "memory_used_bytes": 30 * GiB,
                  "utilization_ratio": 0.97, "temperature_c": 61.0, "up": True}  # fmt: skip
        store.write([Point(GPU_SAMPLE, {"host": "host-b", "gpu": "3", "uuid": UUID}, fields, time.time_ns())])
        announce(redis.url, "b", host="host-b", gpu="0", gpu_uuid=UUID, job_id="j1")  # CUDA's index 0 is NVML's 3
        announce(redis.url, "c", host="host-c", gpu="1")
        announce(redis.url, "d", host="host-d", gpu="cpu")

        answer = requests.get(f"{monitor.url}/monitor/api/fleet", timeout=10)
        assert answer.status_code == 200, answer.text
        view = answer.json()
        assert view["source"] == api.url
        by_host = {w["host"]: w for w in view["workers"]}
        matched = by_host["host-b"]
        assert matched["device"]["utilization_ratio"] == 0.97
        assert matched["device"]["memory_used_bytes"] == 30 * GiB
        assert matched["gpu_name"] == "NVIDIA H200"  # the sample names the card the worker did not
        assert "no sample of GPU 1 on host-c" in by_host["host-c"]["device_note"]
        assert by_host["host-d"]["device"] is by_host["host-d"]["device_note"] is None  # a CPU worker

        redis.kill()
        away = requests.get(f"{monitor.url}/monitor/api/fleet", timeout=15)
        assert away.status_code == 503
        assert "cannot read its queue" in away.json()["error"]
        assert "Redis" in away.json()["error"]

    with monitor_for(tmp_path / "alone", f"http://127.0.0.1:{free_port()}") as alone:
        gone = requests.get(f"{alone.url}/monitor/api/fleet", timeout=10)
        assert gone.status_code == 502
        assert "did not answer (ConnectionError)" in gone.json()["error"]
    with monitor_for(tmp_path / "none", None) as unconfigured:
        missing = requests.get(f"{unconfigured.url}/monitor/api/fleet", timeout=10)
        assert missing.status_code == 404
        assert "--generator-url" in missing.json()["error"]
