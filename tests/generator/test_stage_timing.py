"""The stage timer on the tiny pipeline: steps booked one behind, in order, with what each step set off.

On a GPU the timer books a step while the next one runs (`steps_in_flight=1`); the CPU clock makes the same code
path run here, so what booking late must keep is checked on it: every step booked once and in order, steps that
tile the loop, a cancel or a failure booking the steps already run, and a counter's growth charged to the step
that caused it. The host timestep handed to DDIM must not change a single value of the clip.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from generator.device_clock import HostClock
from generator.pipeline import load_pipeline
from generator.stages import JobCancelled, StageTimer, StageTiming

CPU = torch.device("cpu")
STEPS = 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return load_pipeline("tiny", CPU, torch.float32, tmp_path_factory.mktemp("cache"))


CALL = {
    "prompt": "a cat",
    "image": Image.new("RGB", (64, 64), (90, 140, 200)),
    "height": 64,
    "width": 64,
    "num_frames": 8,
    "num_inference_steps": STEPS,
    "output_type": "np",
}


def run(timer: StageTimer, timings: list[StageTiming], cancelled: Any = lambda: False) -> np.ndarray:
    return timer.run(timings.append, cancelled, **CALL, generator=torch.Generator().manual_seed(3)).frames[0]


class UNetCalls:
    """Count the tiny UNet's calls, optionally failing the n-th."""

    def __init__(self, unet: torch.nn.Module, fail_at: int | None = None) -> None:
        self.calls = 0
        self._fail_at = fail_at
        self._handle = unet.register_forward_pre_hook(self._called)

    def _called(self, *_: Any) -> None:
        self.calls += 1
        if self.calls == self._fail_at:
            raise RuntimeError("the UNet failed")

    def remove(self) -> None:
        self._handle.remove()


@pytest.fixture
def unet_calls(tiny: Any) -> Iterator[list[UNetCalls]]:
    made: list[UNetCalls] = []
    yield made
    for calls in made:
        calls.remove()


def steps_of(timings: list[StageTiming]) -> list[StageTiming]:
    return [t for t in timings if t.stage == "denoising_step"]


@pytest.mark.parametrize("in_flight", [0, 1])
def test_every_step_is_booked_once_in_order_and_the_steps_tile_the_loop(tiny: Any, in_flight: int) -> None:
    timings: list[StageTiming] = []

    run(StageTimer(tiny, steps_in_flight=in_flight), timings)

    stages = [t.stage for t in timings]
    assert stages == [
        "text_encoding",
        "image_encoding",
        "image_latents",
        *["denoising_step"] * STEPS,
        "denoising",
        "decode_video",
    ]
    steps = steps_of(timings)
    assert [(s.step, s.total_steps) for s in steps] == [(n, STEPS) for n in range(1, STEPS + 1)]
    for before, after in itertools.pairwise(steps):
        assert after.started_at == pytest.approx(before.started_at + before.duration_s, abs=1e-6)
    loop = next(t for t in timings if t.stage == "denoising")
    assert loop.started_at == steps[0].started_at
    assert loop.duration_s == pytest.approx(sum(s.duration_s for s in steps), abs=1e-6)


def test_the_host_timestep_leaves_the_clip_unchanged(tmp_path: Path) -> None:
    fresh = load_pipeline("tiny", CPU, torch.float32, tmp_path / "cache")  # not yet wrapped by any timer
    torch.manual_seed(0)  # the pipeline draws the image latents' noise from torch's global generator
    untimed = fresh(**CALL, generator=torch.Generator().manual_seed(3)).frames[0]
    seen: list[object] = []
    scheduler_step = fresh.scheduler.step

    @functools.wraps(scheduler_step)
    def step_seen(model_output: Any, timestep: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(timestep)
        return scheduler_step(model_output, timestep, *args, **kwargs)

    fresh.scheduler.step = step_seen
    timer = StageTimer(fresh, steps_in_flight=1)
    torch.manual_seed(0)
    timed = run(timer, [])

    assert seen == [751, 501, 251, 1]
    assert all(type(t) is int for t in seen)  # host numbers, not device tensors
    assert np.array_equal(timed, untimed)


def test_a_cancel_books_the_steps_already_run_before_it_stops_the_loop(tiny: Any) -> None:
    timings: list[StageTiming] = []
    timer = StageTimer(tiny, steps_in_flight=1)

    with pytest.raises(JobCancelled):
        run(timer, timings, cancelled=lambda: len([t for t in timings if t.stage == "denoising_step"]) >= 1)

    # Step 1 was booked at step 2's end; the cancel is seen at step 3, after step 2 ran: both are booked.
    assert [s.step for s in steps_of(timings)] == [1, 2]
    assert "denoising" not in [t.stage for t in timings]


def test_a_failed_step_leaves_the_steps_before_it_booked(tiny: Any, unet_calls: list[UNetCalls]) -> None:
    timings: list[StageTiming] = []
    unet_calls.append(UNetCalls(tiny.unet, fail_at=3))

    with pytest.raises(RuntimeError, match="the UNet failed"):
        run(StageTimer(tiny, steps_in_flight=1), timings)

    assert [s.step for s in steps_of(timings)] == [1, 2]


@pytest.mark.parametrize("in_flight", [0, 1])
def test_a_counters_growth_is_charged_to_the_step_that_caused_it(
    tiny: Any, unet_calls: list[UNetCalls], in_flight: int
) -> None:
    calls = UNetCalls(tiny.unet)
    unet_calls.append(calls)
    # Stands for a compiled UNet building a graph in its third call: the count grows during step 3 only.
    timer = StageTimer(tiny, steps_in_flight=in_flight, counters=lambda: {"unet": 1 if calls.calls >= 3 else 0})
    timings: list[StageTiming] = []

    run(timer, timings)

    charged = [(t.stage, t.step) for t in timings if t.counted]
    assert charged == [("denoising_step", 3)]
    assert next(t for t in timings if t.step == 3).counted == {"unet": 1}


def test_a_run_after_a_failed_one_starts_clean(tiny: Any, unet_calls: list[UNetCalls]) -> None:
    timer = StageTimer(tiny, steps_in_flight=1)
    unet_calls.append(UNetCalls(tiny.unet, fail_at=2))
    with pytest.raises(RuntimeError):
        run(timer, [])
    unet_calls.pop().remove()
    timings: list[StageTiming] = []

    run(timer, timings)

    assert [s.step for s in steps_of(timings)] == list(range(1, STEPS + 1))


def test_the_cpu_clock_is_the_wall_clock() -> None:
    clock = HostClock()
    mark = clock.mark()

    assert clock.time_of(mark) == mark
    assert clock.now() >= mark
