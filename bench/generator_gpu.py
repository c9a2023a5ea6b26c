"""Prove the generator on a GPU: full-size stage times and peak memory, then a real CUDA OOM survived.

Run on a machine with an NVIDIA GPU (the lent H100):
    python bench/generator_gpu.py --out results.json
It serves the real app in this process (so it can lower torch's memory cap between phases) and drives it over
HTTP exactly as users do. Phases:
  A. `full` mode, 512x512, 16 frames, 50 steps: every stage's time, torch's peak and NVML's peak memory.
  B. torch capped at 20% of the card, admission control on: a 1024p/32-frame job is degraded or refused.
  C. the same cap with admission control bypassed (estimate 0): the job hits a real CUDA OOM; the service
     reports it with a suggestion, frees the memory, and
  D. the next job (cap lifted) succeeds.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests
import torch
from PIL import Image
from waitress.server import create_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.events import epoch_s
from generator.app import create_app
from generator.config import GeneratorConfig
from monitor.collection.nvml import NvmlReader


class NvmlPeak:
    """Sample the card's used memory every 50 ms in a thread and keep the peak."""

    def __init__(self) -> None:
        self.reader = NvmlReader()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for gpu in self.reader.read():
                if gpu.memory_used_bytes:
                    self.peak = max(self.peak, gpu.memory_used_bytes)

    def __enter__(self) -> NvmlPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def submit(url: str, **fields: Any) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (640, 480), (90, 140, 200)).save(buffer, format="PNG")
    data = {"prompt": "a sailing boat on a calm sea at sunset", "fps": 8, "guidance_scale": 9.0, **fields}
    answer = requests.post(f"{url}/api/jobs", data=data, files={"image": ("in.png", buffer.getvalue())}, timeout=30)
    answer.raise_for_status()
    return answer.json()["job_id"]


def wait(url: str, job_id: str, deadline_s: float = 900) -> dict[str, Any]:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        job = requests.get(f"{url}/api/jobs/{job_id}", timeout=10).json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise TimeoutError(job_id)


def summary(job: dict[str, Any], nvml_peak: int | None = None) -> dict[str, Any]:
    keys = ("state", "requested", "effective", "notes", "stage_durations_s", "peak_memory_bytes", "error", "suggestion")
    out = {key: job[key] for key in keys}
    started, finished = epoch_s(job["started_at"]), epoch_s(job["finished_at"])
    out["total_s"] = None if started is None or finished is None else round(finished - started, 3)
    if nvml_peak is not None:
        out["nvml_peak_used_bytes"] = nvml_peak
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    parser.add_argument("--model", default="full")
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    config = GeneratorConfig(port=7960, model=args.model, outputs=tmp / "out", state_dir=tmp / "state")
    started = time.time()
    app = create_app(config)
    server = create_server(app, host="127.0.0.1", port=config.port, threads=4)
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{config.port}"
    while requests.get(f"{url}/ready", timeout=5).status_code != 200:
        time.sleep(0.5)
    worker = app.extensions["generator"].workers[0]
    device = worker.device
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device),
        "ready_after_s": round(time.time() - started, 2),
        "resident_after_load_bytes": torch.cuda.memory_allocated(device),
    }

    with NvmlPeak() as peak:
        job = wait(url, submit(url, resolution=512, num_frames=16, steps=args.steps))
    results["A_full_512x16x50"] = summary(job, peak.peak)

    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(0.2, device)
    worker.memory_fraction = 0.2
    job = wait(url, submit(url, resolution=1024, num_frames=32, steps=10))
    results["B_capped_admission_on_1024x32"] = summary(job)

    real_estimate = worker.estimate
    worker.estimate = lambda params: 0
    before = torch.cuda.memory_allocated(device)
    job = wait(url, submit(url, resolution=1024, num_frames=32, steps=10))
    results["C_capped_admission_bypassed_1024x32"] = summary(job)
    results["C_allocated_before_bytes"] = before
    results["C_allocated_after_bytes"] = torch.cuda.memory_allocated(device)
    metrics = requests.get(f"{url}/metrics", timeout=5).text
    results["C_consecutive_ooms"] = [line for line in metrics.splitlines() if line.startswith("i2v_consecutive_oom")]

    worker.estimate = real_estimate
    torch.cuda.set_per_process_memory_fraction(1.0, device)
    worker.memory_fraction = None
    job = wait(url, submit(url, resolution=512, num_frames=16, steps=args.steps))
    results["D_next_job_after_oom"] = summary(job)
    results["D_ready"] = requests.get(f"{url}/ready", timeout=5).json()
    results["total_card_bytes"] = total
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    server.close()


if __name__ == "__main__":
    main()
