"""The real generator (tiny model) and the real monitor, both served over HTTP in this process, wired together.

The monitor is assembled by `build_monitor`, as `python -m monitor` assembles it, from a MonitorConfig; the one
stand-in is the sampler's GPU reader (CI has no GPU), whose memory reading the tests set.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import requests
import torch
from transformers import CLIPImageProcessor, CLIPModel

from common.spool import Spool
from monitor.alerts.settings import DEFAULT_RULES
from monitor.collection.nvml import CallStats, GpuSnapshot
from monitor.compose import Monitor, build_monitor
from monitor.config import MonitorConfig
from monitor.storage import open_store, schema
from monitor.storage.writer import Writer
from tests.generator.conftest import GeneratorServer, serve_generator
from tests.quality.conftest import tiny_clip_config, write_tiny_tokenizer
from tests.servers import AppServer, free_port

ADMIN_TOKEN = "e2e-admin"
GIB = 1 << 30


class FakeGpus:
    """The sampler's GPU seam: one 80 GiB GPU whose used share the test sets, drawing a steady `watts` (its energy
    counter read on every tick); every other reading is real."""

    available = True
    reason = None
    total_bytes = 80 * GIB
    watts = 250.0

    def __init__(self) -> None:
        self.used_ratio = 0.10
        self._started = time.monotonic()

    def read(self) -> tuple[GpuSnapshot, ...]:
        used = int(self.total_bytes * self.used_ratio)
        return (
            GpuSnapshot(
                index=0, uuid="GPU-e2e", name="stand-in", up=True, memory_used_bytes=used,
                memory_total_bytes=self.total_bytes, temperature_c=50.0, utilization_ratio=0.9,
                energy_j=1e6 + self.watts * (time.monotonic() - self._started), energy_age_s=0.0,
            ),
        )  # fmt: skip

    def call_stats(self) -> dict[str, CallStats]:
        return {}

    def error_counts(self) -> dict[tuple[str, str], int]:
        return {}

    def shutdown(self) -> None:
        return None


@dataclass
class Stack:
    """The served pair: the generator, the monitor's parts and URL, the GPU stand-in, the restart marker."""

    generator: GeneratorServer
    monitor: Monitor
    monitor_url: str
    gpus: FakeGpus
    restart_marker: Path

    def api(self, path: str) -> requests.Response:
        """GET a monitor API path (under /monitor/api)."""
        return requests.get(f"{self.monitor_url}/monitor/api{path}", timeout=10)


def fast_severe_rules(folder: Path) -> Path:
    """Write the shipped rules with the severe memory tier's `for` cut from 10 s to 1 s (a tiny job is short)."""
    text = DEFAULT_RULES.read_text()
    severe_for = "    clear: 0.90\n    for: 10s\n"
    assert text.count(severe_for) == 1, "the shipped severe GpuMemoryHigh rule changed: update this test"
    path = folder / "rules.yml"
    path.write_text(text.replace(severe_for, "    clear: 0.90\n    for: 1s\n"))
    return path


def save_tiny_clip(folder: Path) -> Path:
    """Save a tiny random CLIP the way a real one ships, for --clip-model."""
    tokenizer = write_tiny_tokenizer(folder / "vocab")
    torch.manual_seed(0)
    CLIPModel(tiny_clip_config(len(tokenizer))).save_pretrained(folder / "clip")
    tokenizer.save_pretrained(folder / "clip")
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(folder / "clip")
    return folder / "clip"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Serve the monitor, then the generator sending it events; tear both down afterwards."""
    root = tmp_path_factory.mktemp("e2e")
    monitor_port = free_port()
    marker = root / "restarts.log"
    append_line = "import sys; open(sys.argv[1], 'a').write('restart\\n')"
    with contextlib.contextmanager(serve_generator)(
        root / "generator",
        queue_size=2,
        admin_token=ADMIN_TOKEN,
        monitor_url=f"http://127.0.0.1:{monitor_port}",
    ) as generator:
        config = replace(
            MonitorConfig(),
            port=monitor_port,
            store_url=f"sqlite:///{root / 'monitor.db'}",
            data_dir=root,
            spool_dir=root / "spool",
            alert_state_path=root / "alerts-state.json",
            generator_url=generator.url,
            sample_interval_s=0.5,
            host_name="test-host",
            outputs_dir=generator.config.outputs,
            clip_model=save_tiny_clip(root / "weights"),
            # The generator started first and spooled only its start-up events: no job in a replay to wait for, so the
            # first clip is scored as soon as its job ends (tests/quality/test_schedule.py covers the quiet period).
            quality_startup_quiet_s=0.0,
            alert_rules=fast_severe_rules(root),
            restart_command=shlex.join([sys.executable, "-c", append_line, str(marker)]),
            admin_token=ADMIN_TOKEN,
            price_per_kwh=0.30,
            price_per_gpu_hour=2.00,
        ).validate()
        store = open_store(config.store_url)
        writer = Writer(store, Spool(config.spool_dir, config.spool_max_bytes), conform=schema.conform)
        writer.start()
        gpus = FakeGpus()
        monitor = build_monitor(config, store, writer, gpus=gpus)
        server = AppServer(monitor.app, port=monitor_port).start()
        monitor.start()
        try:
            yield Stack(generator, monitor, f"http://127.0.0.1:{monitor_port}", gpus, marker)
        finally:
            server.stop()
            monitor.stop()
