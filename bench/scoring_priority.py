"""What the scorer's CPU priority costs the rest of the monitor when every core is busy, and how long a clip then takes.

    python -m bench.scoring_priority --out bench/results/scoring_priority.json      # about 4 minutes on 2 cores

For each of `MONITOR_QUALITY_CPU_PRIORITY`'s values (idle, low, normal), in one process as the monitor runs it: a
QualityScorer with a full-size random-weight CLIP (bench/clip_folder.py, ViT-L/14 by default) scores one 512x512,
16-frame clip while one spinning process per core keeps every core busy at normal priority (what a host looks like
when a CPU generator runs flat out). Meanwhile a normal-priority thread of the same process sleeps 10 ms at a time
and records how late it wakes: the time it waits for a core and for Python's lock, which an idle-class scorer holds
when the spinners preempt it. Reported per priority: the wake-ups' lateness (p50, p99, max) and whether the clip
was scored within `--limit-s`, and when. The spinners are what makes this a worst case: on a GPU host the generator
leaves most cores free, and the idle class then costs nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import machine
from common.cpu_priority import PRIORITIES
from common.events import Event, utc_now_iso
from monitor.quality.clip_score import ClipScorer
from monitor.quality.scorer import QualityScorer
from tests.quality import synthetic

SLEEP_S = 0.01
SPIN = "while True: pass"


def lateness(priority: str, clip_dir: Path, work: Path, spinners: int, limit_s: float) -> dict[str, Any]:
    """Score one clip at `priority` beside `spinners` busy processes; return the wake-ups' lateness and the outcome."""
    outputs = work / priority / "outputs"
    video = synthetic.job_folder(
        outputs, "clip", synthetic.write_mp4(synthetic.smooth_pan(side=512), work / f"{priority}.mp4"), None
    )
    scorer = QualityScorer(
        clip=ClipScorer.from_dir(clip_dir), write=lambda points: None, host_name="bench", outputs_dir=outputs,
        cpu_priority=priority,
    )  # fmt: skip
    spinning = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(spinners)]
    late: list[float] = []
    try:
        scorer.start()
        started = time.monotonic()
        finished = Event(
            job_id="clip", host="bench", gpu="cpu", kind="job", status="succeeded", started_at=utc_now_iso(),
            prompt="a slow pan over a texture", video_path=str(video),
        )  # fmt: skip
        scorer.submit_event(finished)
        while time.monotonic() - started < limit_s and (scorer.pending() or scorer.status()["scoring"]):
            asleep = time.monotonic()
            time.sleep(SLEEP_S)
            late.append(time.monotonic() - asleep - SLEEP_S)
        took_s = time.monotonic() - started
        scored = not scorer.pending() and not scorer.status()["scoring"]
        said = scorer.status()["cpu_priority"]
    finally:
        for process in spinning:
            process.kill()
            process.wait()
        scorer.stop(timeout_s=120)  # an idle-class scorer finishes its clip once the spinners are gone
    late.sort()
    return {
        "priority": priority,
        "in_effect": said,
        "scored_within_limit": scored,
        "scored_after_s": round(took_s, 1) if scored else None,
        "wakeups": len(late),
        "late_ms": {
            "p50": round(1000 * late[len(late) // 2], 2),
            "p99": round(1000 * late[int(len(late) * 0.99)], 2),
            "max": round(1000 * late[-1], 2),
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Measure each priority in turn, write the JSON and print a table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results/scoring_priority.json"))
    parser.add_argument("--clip", default="vit-l-14", help="the CLIP's size (bench/clip_folder.py)")
    parser.add_argument("--limit-s", type=float, default=60.0, help="how long each priority's clip may take")
    parser.add_argument("--spinners", type=int, help="busy processes (default: one per core)")
    args = parser.parse_args(argv)
    spinners = args.spinners or os.cpu_count() or 2
    work = Path(tempfile.mkdtemp(prefix="scoring-priority-"))
    clip_dir = work / "clip"
    subprocess.run(
        [sys.executable, "-m", "bench.clip_folder", "--model", args.clip, "--out", str(clip_dir)],
        check=True, capture_output=True,
    )  # fmt: skip
    runs = [lateness(priority, clip_dir, work, spinners, args.limit_s) for priority in PRIORITIES]
    result = {
        "benchmark": "scoring_priority",
        "command": " ".join(["python -m bench.scoring_priority", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(),
        "clip": args.clip,
        "spinners": spinners,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| priority | clip scored | a normal thread's wake-up late, p50 / p99 / max (ms) |")
    print("|---|---|---|")
    for run in runs:
        scored = f"after {run['scored_after_s']} s" if run["scored_within_limit"] else f"not in {args.limit_s:g} s"
        late = run["late_ms"]
        print(f"| {run['priority']} | {scored} | {late['p50']} / {late['p99']} / {late['max']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
