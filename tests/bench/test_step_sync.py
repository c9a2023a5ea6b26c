"""bench/step_sync.py without a GPU: every mode runs once on the tiny model, and the sender's events all arrive."""

from __future__ import annotations

import json
from pathlib import Path

from bench.step_sync import MODES, main

STEPS = 2
SENDER_CALLS = 2 * 2  # two modes with a sender, each a warm-up call and one round
EVENTS_PER_CALL = 3 + STEPS + 1  # the three encodings, each step, the loop (latents out: no decode)


def test_every_mode_runs_and_every_event_reaches_the_sink(tmp_path: Path) -> None:
    out = tmp_path / "step_sync.json"

    main(
        [
            "--model",
            "tiny",
            "--resolution",
            "64",
            "--num-frames",
            "8",
            "--steps",
            str(STEPS),
            "--rounds",
            "1",
            "--out",
            str(out),
        ]
    )

    doc = json.loads(out.read_text())
    assert set(doc["call_s"]) == set(MODES)
    assert all(doc["call_s"][mode]["n"] == 1 for mode in MODES)
    assert set(doc["over_diffusers"]) == set(MODES[1:])
    assert doc["events_delivered"] == SENDER_CALLS * EVENTS_PER_CALL
    assert doc["device"] == "cpu"
