"""The GPUs as last sampled: a named host's recent ticks are read first, older ones when there are none."""

from __future__ import annotations

from pathlib import Path

from monitor.analysis.devices import MAX_SAMPLE_AGE_S, live_devices
from monitor.storage import open_store
from tests.monitor.history import NOW_NS, S, gpu_sample

GB = 10**9


def test_every_gpu_of_the_hosts_latest_tick_is_found_with_its_newest_state(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/m.db")
    for age_s, used in ((30, 5), (2, 9), (1, 11)):  # a tick every so often: both GPUs each time
        store.write([gpu_sample(used=used * GB, gpu=g, at_ns=NOW_NS - age_s * S) for g in ("0", "1")])
    store.write([gpu_sample(used=50 * GB, host="node-b", at_ns=NOW_NS - S)])

    devices = live_devices(store, NOW_NS, "node-a")

    assert [(d.host, d.gpu, d.memory_used_bytes) for d in devices] == [
        ("node-a", "0", 11 * GB),
        ("node-a", "1", 11 * GB),
    ]
    assert {d.host for d in live_devices(store, NOW_NS)} == {"node-a", "node-b"}
    store.close()


def test_a_host_sampled_only_a_minute_ago_is_still_live_and_one_past_the_limit_is_not(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/m.db")
    store.write([gpu_sample(used=7 * GB, at_ns=NOW_NS - 60 * S)])
    store.write([gpu_sample(used=7 * GB, host="node-c", at_ns=NOW_NS - (MAX_SAMPLE_AGE_S + 5) * S)])

    assert [d.memory_used_bytes for d in live_devices(store, NOW_NS, "node-a")] == [7 * GB]
    assert live_devices(store, NOW_NS, "node-c") == []
    store.close()
