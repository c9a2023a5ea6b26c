"""Build bench/results/README.md: one Markdown table of every figure in the results folder, H100 rows included."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.harness import RESULTS, Figure

HEADER = """# Benchmark results

Written by `python -m bench.run` (`make bench`); one JSON file per benchmark beside this file holds the raw
samples, the machine and its load average before and after. The machine is shared: each figure is a median of
interleaved runs, or a ratio against a baseline measured in the same run. Rows marked H100 come from the lent
H100's files (`h100_*.json`) and are not re-measured here.
"""


def h100_figures(results: Path = RESULTS) -> list[tuple[str, Figure]]:
    """Return (benchmark, figure) for each figure measured on the lent H100, read from its result files."""
    figures: list[tuple[str, Figure]] = []

    def load(name: str) -> dict[str, Any] | None:
        path = results / name
        return json.loads(path.read_text()) if path.exists() else None

    if overhead := load("h100_monitor_overhead.json"):
        ratio = overhead.get("ratio_vs_unmonitored", {})
        for interval in ("2.0", "0.5"):
            if interval in ratio:
                figures.append((
                    "overhead",
                    Figure(
                        f"Generation time, monitor sampling every {float(interval):g} s / none (`full`, 512x512x16x50)",
                        ratio[interval], "x", "interleaved phases, median of 2 jobs each (bench/monitor_gpu.py)",
                        "<= 1.005 x" if interval == "2.0" else None,
                        ratio[interval] <= 1.005 if interval == "2.0" else None,
                        None if ratio[interval] <= 1.005 or interval != "2.0" else f"{ratio[interval]:.3f}",
                        "H100 (h100_monitor_overhead.json)",
                    ),
                ))  # fmt: skip
    if probe := load("h100_nvml_probe.json"):
        tick = probe["tick"]["thread_cpu"]
        for q in ("p50", "p99"):
            value = tick[f"{q}_us"] / 1000
            figures.append((
                "sampler",
                Figure(
                    f"Sampler tick CPU time, {q} (every GPU field + host)", value, "ms",
                    f"{tick['count']} ticks at 50 ms, thread CPU time (bench/nvml_probe.py)",
                    "<= 1 ms", value <= 1.0, None if value <= 1.0 else f"{value:.2f}x the target (+{value - 1:.2f} ms)",
                    "H100 (h100_nvml_probe.json)",
                ),
            ))  # fmt: skip
    for model in ("vit-b-32", "vit-l-14"):
        if quality := load(f"h100_quality_{model}.json"):
            value = quality["total_s"]
            target = quality.get("target_s", 0.2)
            figures.append((
                "quality",
                Figure(
                    f"Quality scoring, 16-frame 512x512 clip, CLIP {model} on the GPU", value, "s",
                    f"median of {quality['repeats']}: decode {quality['decode_s']} s, flow {quality['flow_s']} s, "
                    f"CLIP {quality['clip_s']} s (bench/bench_quality.py --device cuda)",
                    f"<= {target:g} s", value <= target,
                    None if value <= target else f"{value / target:.2f}x the target (+{value - target:.2f} s)",
                    f"H100 (h100_quality_{model}.json)",
                ),
            ))  # fmt: skip
    return figures


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _row(figure: Figure) -> str:
    met = {True: "met", False: f"**missed** ({figure.missed_by})", None: "n/a"}[figure.met]
    return (
        "| "
        + " | ".join(
            _cell(x) for x in (figure.figure, figure.display(), figure.target or "-", met, figure.how, figure.where)
        )
        + " |"
    )


def write_readme(out: Path, order: list[str]) -> Path:
    """Rewrite `out/README.md` from the benchmark files in `out` (in `order`) and the H100 files."""
    lines = [HEADER]
    docs = [(name, json.loads((out / f"{name}.json").read_text())) for name in order if (out / f"{name}.json").exists()]
    if docs:
        lines.append("| benchmark | run at (UTC) | mode | load average before → after (1, 5, 15 min) | cores | took |")
        lines.append("|---|---|---|---|---|---|")
        for name, doc in docs:
            mode = "quick (figures mean nothing)" if doc.get("quick") else "full"
            if "error" in doc:
                mode += f"; **failed**: {_cell(doc['error'])}"
            cores = doc.get("machine", {}).get("cpu_count")
            lines.append(
                f"| {name} | {doc.get('started_at')} | {mode} | {doc.get('load_average_before')} → "
                f"{doc.get('load_average_after')} | {cores} | {doc.get('duration_s')} s |"
            )
        lines.append("")
    lines.append("| figure | value | target | met? | how measured | where |")
    lines.append("|---|---|---|---|---|---|")
    h100 = h100_figures()
    for name in order:
        doc = dict(docs).get(name, {})
        lines.extend(_row(Figure(**entry)) for entry in doc.get("figures", []))
        lines.extend(_row(figure) for bench, figure in h100 if bench == name)
    lines.append("")
    path = out / "README.md"
    path.write_text("\n".join(lines))
    return path
