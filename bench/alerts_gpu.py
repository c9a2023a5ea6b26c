"""Prove the tiered memory alerts on a GPU: warning, then severe, the running job cancelled, memory freed, resolves.

Run on a machine with an NVIDIA GPU (the lent H100):
    python bench/alerts_gpu.py --out alerts.json
It starts `python -m generator --model full` and `python -m monitor --sample-interval 0.5` (sharing ADMIN_TOKEN,
with ALERT_WEBHOOK_URLS pointing at a receiver inside this script), submits a 512x512, 16-frame, 50-step job and,
once it is denoising, has a child process allocate GPU memory with torch in steps until NVML's used share
passes 85% (held until the warning arrives), then 95%. A thread here reads NVML every 10 ms and records when each
threshold was crossed; the receiver records when each notification arrived. Then the child exits, and the script
waits for the memory to fall and for both tiers' resolves. It prints JSON: detection latency (crossing to
notification) per tier, split into the monitor's sampling delay, the rule's `for`, and delivery.

A 50-step job at 512p lasts about 17 s on an H100, shorter than the shipped rules' `for` (warning 30 s, severe
10 s) plus the fill, so by default the memory tiers run with `for` 3 s and 1 s (everything else is the shipped
rule file); `--shipped-rules --steps 250` runs the shipped durations on a longer job.

The child never takes the card's last `--safety-gib` (default 1.5 GiB): each step is sized from
torch.cuda.mem_get_info. A hard timeout (`--timeout`, default 540 s) ends everything; the JSON then says so.

Smoke test on a CPU (no hog on a GPU: the child pretends, the alerts cannot fire, every other path runs):
    python bench/alerts_gpu.py --model tiny --resolution 256 --frames 8 --steps 10 --fake-gpu --alert-wait 5
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.events import epoch_s  # noqa: E402 (the project is on the path only from here)

GIB = 1 << 30
ADMIN_TOKEN = "bench-alerts-admin"
FINAL = ("succeeded", "failed", "cancelled")
WARNING_AT, SEVERE_AT = 0.85, 0.95  # the shipped GpuMemoryHigh thresholds
WARNING_CLEAR, SEVERE_CLEAR = 0.80, 0.90


def free_port() -> int:
    """Return a loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(condition: Callable[[], Any], deadline_s: float, interval_s: float = 0.05) -> Any:
    """Return the first truthy result of `condition`, or None once `deadline_s` has passed."""
    end = time.monotonic() + deadline_s
    while True:
        result = condition()
        if result or time.monotonic() > end:
            return result or None
        time.sleep(interval_s)


# ----- the memory hog (a child process: `alerts_gpu.py --hog [--fake-gpu]`) -------------------------------------


class FakeCuda:
    """Stand in for torch.cuda on a CPU smoke run: an 80 GiB card, 10% used by others, nothing allocated."""

    total = 80 * GIB

    def __init__(self) -> None:
        self.held = 0

    def mem_get_info(self) -> tuple[int, int]:
        return self.total - self.total // 10 - self.held, self.total

    def take(self, size: int) -> int:
        self.held += size
        return size


def next_chunk(free: int, total: int, target: float, safety: int, max_chunk: int = 2 * GIB) -> int:
    """Return the bytes to allocate next to pass `target` (a used share), or 0 when passed or out of room."""
    used = total - free
    if used / total > target:
        return 0
    need = int(target * total) - used + 64 * (1 << 20)  # a little past the line, not onto it
    return max(0, min(need, free - safety, max_chunk))


def hog(fake: bool, safety: int) -> int:
    """Serve `fill <share>` and `exit` on stdin; print a JSON line per allocation and one when a fill ends."""
    if fake:
        cuda = FakeCuda()
        mem_get_info, take = cuda.mem_get_info, cuda.take
    else:
        import torch

        blocks: list[Any] = []
        torch.cuda.init()

        def mem_get_info() -> tuple[int, int]:
            free, total = torch.cuda.mem_get_info()
            return int(free), int(total)

        def take(size: int) -> int:
            blocks.append(torch.empty(size, dtype=torch.uint8, device="cuda"))
            return size

    held = 0

    def say(**fields: Any) -> None:
        free, total = mem_get_info()
        print(json.dumps({"t": time.time(), "share": (total - free) / total, "held_bytes": held, **fields}), flush=True)

    say(ready=True)
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "exit":
            break
        target = float(command[1])
        while True:
            free, total = mem_get_info()
            size = next_chunk(free, total, target, safety)
            if size == 0:
                break
            held += take(size)
            say()
        free, total = mem_get_info()
        say(done=True, reached=(total - free) / total > target)
    say(exiting=True)
    return 0


class Hog:
    """The parent's handle on the hog child: send a fill, read its JSON lines with deadlines."""

    def __init__(self, fake: bool, safety_gib: float) -> None:
        argv = [sys.executable, str(Path(__file__).resolve()), "--hog", "--safety-gib", str(safety_gib)]
        self.process = subprocess.Popen(
            argv + (["--fake-gpu"] if fake else []), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.trace: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.expect("ready", 120)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with contextlib.suppress(ValueError):
                self.lines.put(json.loads(line))

    def expect(self, key: str, deadline_s: float) -> dict[str, Any]:
        """Return the next line carrying `key`, keeping the ones before it; TimeoutError past the deadline."""
        end = time.monotonic() + deadline_s
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"the memory hog sent no {key!r} line in {deadline_s:.0f} s") from None
            self.trace.append(line)
            if line.get(key):
                return line

    def fill(self, share: float, deadline_s: float = 60) -> dict[str, Any]:
        """Allocate until the used share passes `share` (or no room is left); return the final line."""
        assert self.process.stdin is not None
        self.process.stdin.write(f"fill {share}\n")
        self.process.stdin.flush()
        return self.expect("done", deadline_s)

    def first_above(self, share: float) -> float | None:
        """Return when the hog first saw the used share above `share`."""
        return next((line["t"] for line in self.trace if line["share"] > share), None)

    def exit(self) -> float:
        """Free everything by ending the child; return when it had exited."""
        with contextlib.suppress(OSError):
            assert self.process.stdin is not None
            self.process.stdin.write("exit\n")
            self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        return time.time()


# ----- what the script observes: NVML and the webhook ------------------------------------------------------------


class NvmlWatch:
    """Read GPU 0's used memory share every 10 ms (as the monitor reads it) and record threshold crossings."""

    def __init__(self, interval_s: float = 0.01) -> None:
        from monitor.collection.nvml import NvmlReader

        self.reader = NvmlReader()
        self.interval_s = interval_s
        self.first_above: dict[float, float] = {}
        self.first_below_after: dict[float, float] = {}
        self.below_armed_at: float | None = None
        self.peak_share = 0.0
        self.latest: tuple[float, float] | None = None
        self.name: str | None = None
        self.total_bytes: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def available(self) -> bool:
        return bool(self.reader.available)

    def share(self) -> float | None:
        gpus = self.reader.read()
        gpu = next((g for g in gpus if g.index == 0), None)
        if gpu is None or not gpu.memory_used_bytes or not gpu.memory_total_bytes:
            return None
        self.name, self.total_bytes = gpu.name, gpu.memory_total_bytes
        return gpu.memory_used_bytes / gpu.memory_total_bytes

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            share, now = self.share(), time.time()
            if share is None:
                continue
            self.latest = (now, share)
            self.peak_share = max(self.peak_share, share)
            for line in (WARNING_AT, SEVERE_AT):
                if share > line:
                    self.first_above.setdefault(line, now)
            if self.below_armed_at is not None:
                for line in (WARNING_CLEAR, SEVERE_CLEAR):
                    if share < line:
                        self.first_below_after.setdefault(line, now)

    def start(self) -> NvmlWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.reader.shutdown()


class Receiver:
    """The webhook the monitor notifies: record when each alert arrived in each state."""

    def __init__(self) -> None:
        self.arrivals: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                now = time.time()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with contextlib.suppress(ValueError), owner.lock:
                    # Alertmanager's webhook payload (version 4): the name and tier are labels.
                    for alert in json.loads(body).get("alerts", []):
                        labels = alert.get("labels") or {}
                        owner.arrivals.append(
                            {
                                "t": now,
                                "alertname": labels.get("alertname"),
                                "severity": labels.get("severity"),
                                "status": alert.get("status"),
                                "description": (alert.get("annotations") or {}).get("description"),
                                "gpu": labels.get("gpu"),
                            }
                        )
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def first(self, name: str, severity: str, status: str, after: float = 0.0) -> float | None:
        """Return when this alert first arrived in `status` (after `after`), or None."""
        with self.lock:
            return next(
                (
                    a["t"]
                    for a in self.arrivals
                    if (a["alertname"], a["severity"], a["status"]) == (name, severity, status) and a["t"] >= after
                ),
                None,
            )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ----- the two services -------------------------------------------------------------------------------------------


def memory_rules(folder: Path, warning_for: str, severe_for: str) -> Path:
    """Write the shipped rules with the memory tiers' `for` replaced; fail loudly if the rule file changed shape."""
    from monitor.alerts.settings import DEFAULT_RULES

    text = DEFAULT_RULES.read_text()
    for clear, old, new in (("0.80", "30s", warning_for), ("0.90", "10s", severe_for)):
        block = f"    clear: {clear}\n    for: {old}\n"
        if text.count(block) != 1:
            raise SystemExit(f"alerts/rules.yml changed: no single GpuMemoryHigh block with clear {clear}, for {old}")
        text = text.replace(block, f"    clear: {clear}\n    for: {new}\n")
    path = folder / "rules.yml"
    path.write_text(text)
    return path


def start(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start a service in this process group (so it dies with the command), logging to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=out)


def answers(url: str, process: subprocess.Popen[bytes]) -> bool:
    """Return whether `url` answers 200; raise if the service died."""
    if process.poll() is not None:
        raise RuntimeError(f"{url.rsplit('/', 1)[0]}'s service exited with {process.returncode} (see its log)")
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def stop(process: subprocess.Popen[bytes] | None) -> int | None:
    """SIGTERM, then SIGKILL after 30 s; return the exit status."""
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode


def submit(url: str, resolution: int, frames: int, steps: int) -> str:
    """Submit a job and return its id."""
    buffer = io.BytesIO()
    Image.new("RGB", (640, 480), (90, 140, 200)).save(buffer, format="PNG")
    data = {"prompt": "a lighthouse in a storm", "resolution": resolution, "num_frames": frames, "steps": steps}
    response = requests.post(f"{url}/api/jobs", data=data, files={"image": ("in.png", buffer.getvalue())}, timeout=30)
    response.raise_for_status()
    return str(response.json()["job_id"])


def _hard_timeout(signum: int, frame: FrameType | None) -> None:
    raise TimeoutError("the hard timeout passed")


def minus(a: float | None, b: float | None) -> float | None:
    """Return a - b rounded to ms, or None when either is unknown."""
    return None if a is None or b is None else round(a - b, 3)


def iso_s(text: str | None) -> float | None:
    """Read the monitor's RFC 3339 UTC time as epoch seconds."""
    if not text:
        return None
    from datetime import UTC, datetime

    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def run(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Run the proof, filling `result` as it goes (so a timeout still reports what happened)."""
    tmp = Path(tempfile.mkdtemp(prefix="alerts-gpu-"))
    result["logs"] = str(tmp)
    gen_port, mon_port = free_port(), free_port()
    gen, mon = f"http://127.0.0.1:{gen_port}", f"http://127.0.0.1:{mon_port}"
    warning_for, severe_for = ("30s", "10s") if args.shipped_rules else (args.warning_for, args.severe_for)
    rules = memory_rules(tmp, warning_for, severe_for)
    result["rules"] = {"file": "shipped" if args.shipped_rules else "shipped, memory tiers' for shortened"}
    result["rules"].update(warning_for=warning_for, severe_for=severe_for, sample_interval_s=args.sample_interval)
    receiver = Receiver()
    watch = NvmlWatch().start()
    result["nvml_available"] = watch.available
    env = {
        **os.environ,
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "ALERT_WEBHOOK_URLS": receiver.url,
        "I2V_ALERT_RULES": str(rules),
        "PYTHONUNBUFFERED": "1",
    }
    generator = monitor = None
    hog: Hog | None = None
    try:
        monitor = start(
            [sys.executable, "-m", "monitor", "--port", str(mon_port), "--generator-url", gen, "--sample-interval",
             str(args.sample_interval), "--data-dir", str(tmp / "monitor"), "--outputs", str(tmp / "outputs")],
            tmp / "monitor.log", env,
        )  # fmt: skip
        generator = start(
            [sys.executable, "-m", "generator", "--model", args.model, "--port", str(gen_port), "--monitor-url", mon,
             "--outputs", str(tmp / "outputs"), "--state-dir", str(tmp / "generator")],
            tmp / "generator.log", env,
        )  # fmt: skip
        if not poll(lambda: answers(f"{mon}/monitor/api/status", monitor), 60):
            raise RuntimeError("the monitor did not answer within 60 s")
        if not poll(lambda: answers(f"{gen}/ready", generator), args.ready_wait, 0.25):
            raise RuntimeError(f"the generator was not ready within {args.ready_wait:.0f} s")
        result["webhook_path_ok"] = bool(poll(lambda: receiver.first("Watchdog", "warning", "firing"), 30))

        # The hog starts first: importing torch and making its CUDA context take seconds of a short job.
        hog = Hog(args.fake_gpu, args.safety_gib)
        job_id = submit(gen, args.resolution, args.frames, args.steps)
        job_url = f"{gen}/api/jobs/{job_id}"
        result["job"] = {"id": job_id, "resolution": args.resolution, "frames": args.frames, "steps": args.steps}
        # From the third step on, the generator's memory is at its denoising plateau: the fill cannot starve it.
        if not poll(lambda: requests.get(job_url, timeout=10).json()["progress"]["step"] >= 3, 300, 0.1):
            raise RuntimeError("the job did not reach its third denoising step within 300 s")
        if watch.latest is not None:
            result["share_before_fill"] = round(watch.latest[1], 4)
        watch_from = time.time()
        result["fill_warning"] = hog.fill(args.warning_share)
        warning_at = poll(lambda: receiver.first("GpuMemoryHigh", "warning", "firing", watch_from), args.alert_wait)
        result["fill_severe"] = hog.fill(args.severe_share)
        severe_at = poll(lambda: receiver.first("GpuMemoryHigh", "severe", "firing", watch_from), args.alert_wait)
        job = poll(lambda: (j := requests.get(job_url, timeout=10).json())["state"] in FINAL and j, 120, 0.1)
        result["job"].update(
            state=job and job["state"],
            step=job and job["progress"]["step"],
            finished_at=job and job["finished_at"],
            cancelled_after_severe_s=minus(job and epoch_s(job["finished_at"]), severe_at),
        )
        watch.below_armed_at = time.time()
        hog_crossing = {line: hog.first_above(line) for line in (WARNING_AT, SEVERE_AT)}
        hog_exited_at = hog.exit()
        hog = None
        freed = poll(lambda: watch.first_below_after.get(WARNING_CLEAR), 30) if watch.available else None
        warning_resolved = poll(
            lambda: receiver.first("GpuMemoryHigh", "warning", "resolved", watch_from), args.alert_wait
        )
        severe_resolved = poll(lambda: receiver.first("GpuMemoryHigh", "severe", "resolved", watch_from), 5)
        alerts = requests.get(f"{mon}/monitor/api/alerts", timeout=10).json()

        crossing = {
            "warning": watch.first_above.get(WARNING_AT) or hog_crossing[WARNING_AT],
            "severe": watch.first_above.get(SEVERE_AT) or hog_crossing[SEVERE_AT],
        }
        arrived = {"warning": warning_at, "severe": severe_at}
        fired = {tier: monitor_alert(alerts, tier) for tier in ("warning", "severe")}
        result["crossing_source"] = "nvml" if watch.first_above else "the hog's own reports (no NVML here)"
        result["crossing_at"] = crossing
        result["notified_at"] = arrived
        result["detection_latency_s"] = {tier: minus(arrived[tier], crossing[tier]) for tier in arrived}
        result["latency_breakdown_s"] = {
            tier: {
                "to_first_sample_above": minus(fired[tier].get("active_at"), crossing[tier]),
                "for": minus(fired[tier].get("fired_at"), fired[tier].get("active_at")),
                "delivery": minus(arrived[tier], fired[tier].get("fired_at")),
            }
            for tier in arrived
        }
        result["memory"] = {
            "peak_share": round(watch.peak_share, 4) if watch.available else None,
            "hog_exited_at": hog_exited_at,
            "below_warning_clear_after_exit_s": minus(freed, hog_exited_at),
            "share_at_end": round(watch.latest[1], 4) if watch.latest else None,
            "gpu": watch.name,
            "total_bytes": watch.total_bytes,
        }
        result["resolved_latency_s"] = {
            "warning": minus(warning_resolved, watch.first_below_after.get(WARNING_CLEAR) or hog_exited_at),
            "severe": minus(severe_resolved, watch.first_below_after.get(SEVERE_CLEAR) or hog_exited_at),
        }
        result["cancel_actions"] = [
            a for a in alerts.get("actions", {}).get("recent", []) if a["action"] == "cancel_job"
        ]
        result["checks"] = {
            "warning_then_severe": bool(warning_at and severe_at and warning_at < severe_at),
            "job_cancelled": result["job"]["state"] == "cancelled",
            "memory_freed": freed is not None,
            "both_resolved": bool(warning_resolved and severe_resolved),
        }
        result["ok"] = all(result["checks"].values())
    finally:
        if hog is not None:
            hog.exit()
        result["exit_status"] = {"generator": stop(generator), "monitor": stop(monitor)}
        watch.stop()
        result["webhook_arrivals"] = [
            {**a, "t": round(a["t"], 3)} for a in receiver.arrivals if a["alertname"] != "Watchdog"
        ]
        receiver.close()
        if not result.get("ok"):  # the logs' folder is gone with the machine: keep their ends
            result["log_tails"] = {
                log.stem: log.read_text(errors="replace")[-2000:] for log in sorted(tmp.glob("*.log"))
            }


def monitor_alert(alerts: dict[str, Any], tier: str) -> dict[str, float | None]:
    """Return the monitor's own times for the GpuMemoryHigh alert of `tier` (active or resolved)."""
    for alert in [*alerts.get("active", []), *alerts.get("history", [])]:
        if (alert["alertname"], alert["severity"]) == ("GpuMemoryHigh", tier):
            return {"active_at": iso_s(alert["active_at"]), "fired_at": iso_s(alert["fired_at"])}
    return {}


def main() -> int:
    """Parse the flags; run the hog child or the proof; print the JSON (exit 0 when every check held)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--model", default="full")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--sample-interval", type=float, default=0.5)
    parser.add_argument("--warning-for", default="3s", help="the warning tier's `for` (shipped: 30s)")
    parser.add_argument("--severe-for", default="1s", help="the severe tier's `for` (shipped: 10s)")
    parser.add_argument("--shipped-rules", action="store_true", help="keep the shipped `for` (needs ~250 steps)")
    parser.add_argument("--warning-share", type=float, default=0.90, help="first fill: above 85%%, below 95%%")
    parser.add_argument("--severe-share", type=float, default=0.965, help="second fill: above 95%%")
    parser.add_argument("--safety-gib", type=float, default=1.5, help="memory the hog always leaves free")
    parser.add_argument("--alert-wait", type=float, default=60, help="seconds to wait for each notification")
    parser.add_argument("--ready-wait", type=float, default=300, help="seconds to wait for the generator")
    parser.add_argument("--timeout", type=int, default=540, help="hard limit on the whole run, seconds")
    parser.add_argument("--fake-gpu", action="store_true", help="smoke test: the hog only pretends")
    parser.add_argument("--hog", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hog:
        return hog(args.fake_gpu, int(args.safety_gib * GIB))
    signal.signal(signal.SIGALRM, _hard_timeout)
    signal.alarm(args.timeout)
    result: dict[str, Any] = {"ok": False, "started_at": time.time()}
    status = 2
    try:
        run(args, result)
        status = 0 if result["ok"] or args.fake_gpu else 1
    except (TimeoutError, RuntimeError, requests.RequestException) as e:
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        signal.alarm(0)
        result["duration_s"] = round(time.time() - result["started_at"], 1)
        text = json.dumps(result, indent=2, default=str)
        print(text, flush=True)
        if args.out:
            args.out.write_text(text)
    return status


if __name__ == "__main__":
    sys.exit(main())
