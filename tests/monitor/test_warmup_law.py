"""The first-at-size warm-up, learned apart: unseen sizes' fresh and warm times come out right, the old mixing does not.

A synthetic set shaped like the H200's figures (full pipeline, fp16, guidance): a step of 0.05 s + 0.045 s per
megapixel-frame (a little more per megapixel-frame at high resolution: 0.24 s at 512p/16, 1.72 s at 1024p/32), 0.6 s
outside the loop plus a decode of 2.7 s at 1024p/32, and on the first job of a size in a generator process a one-off
warm-up of 0.4 s (256p) to 0.8 s (1024p/32) with a 15% spread. The jobs run in two generator processes (a restart
between them), so most sizes are first in a process once or twice and some are repeated warm.
"""

from __future__ import annotations

import random

import pytest

from monitor.analysis.laws import Laws, Observation
from monitor.analysis.scaling import JobShape

H200 = "NVIDIA H200"
SIZES = [(256, 16), (256, 32), (512, 16), (512, 24), (512, 32), (768, 16), (768, 24), (1024, 16), (1024, 32)]
TOLERANCE = 0.10  # the goal for time on sizes never run


def step_s(shape: JobShape) -> float:
    """Return the true seconds of one warm denoising step."""
    return 0.05 + 0.045 * shape.x + 0.005 * shape.x * shape.megapixels


def outside_s(shape: JobShape) -> float:
    """Return the true seconds outside the loop: encoders and export, and the decode growing with the pixels."""
    return 0.6 + 2.7 * shape.megapixels * shape.num_frames / (1.048576 * 32)


def warmup_s(shape: JobShape) -> float:
    """Return the true one-off warm-up of a size new to the process: 0.4 s, up to 0.8 s at 1024p/32."""
    return 0.4 + 0.4 * shape.x / JobShape(1024, 32, 1).x


def warm_run_s(shape: JobShape) -> float:
    """Return the true run of a job of a size its process had run."""
    return outside_s(shape) + shape.steps * step_s(shape)


def job(shape: JobShape, first: bool, rng: random.Random, *, flagged: bool = True) -> Observation:
    """Return one measured job: 1% spread on its parts, 15% on its warm-up (paid only when first at its size).

    `flagged` False reads it as the monitor did before the warm-up was measured: no warm-up, no generator's word.
    """
    step = step_s(shape) * (1 + rng.gauss(0, 0.01))
    warmup = warmup_s(shape) * (1 + rng.gauss(0, 0.15)) if first else abs(rng.gauss(0, 0.005))
    run = outside_s(shape) * (1 + rng.gauss(0, 0.01)) + shape.steps * step + warmup
    if not flagged:
        return Observation(H200, shape, None, run, step)
    return Observation(H200, shape, None, run, step, warmup_s=warmup, first_at_size=first)


def two_processes(held: tuple[int, int], seed: int, *, flagged: bool = True) -> list[Observation]:
    """Return 16 jobs of every size but `held`, over two generator processes: each process's first job of a size
    pays the warm-up, its later ones do not."""
    rng = random.Random(seed)
    sizes = [size for size in SIZES if size != held]
    jobs: list[Observation] = []
    for _ in range(2):  # a restart between: the second process warms every size again
        seen: set[tuple[int, int]] = set()
        for _ in range(8):
            size = rng.choice(sizes)
            jobs.append(job(JobShape(*size, rng.choice((10, 15, 20, 25))), size not in seen, rng, flagged=flagged))
            seen.add(size)
    return jobs


@pytest.mark.parametrize("held", SIZES, ids=lambda size: f"{size[0]}p-{size[1]}")
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_an_unseen_sizes_fresh_and_warm_times_are_within_10_percent(held: tuple[int, int], seed: int) -> None:
    time = Laws(two_processes(held, seed)).time
    for steps in (10, 25):
        shape = JobShape(*held, steps)
        warm, warmup = time.estimate(shape), time.warmup_estimate(shape)
        assert warmup.source == "learned"
        assert warm.value == pytest.approx(warm_run_s(shape), rel=TOLERANCE)
        assert warm.value + warmup.value == pytest.approx(warm_run_s(shape) + warmup_s(shape), rel=TOLERANCE)


def test_the_old_mixing_misses_a_small_size_one_way_or_the_other_the_warmup_law_does_not() -> None:
    """Before, the warm-up stayed in the outside part: one time for a 256p job, too long for a repeat of its size and
    too short for its first run in a process (the GPU run saw 256p/28/22 16% off)."""
    held = (256, 16)
    shape = JobShape(*held, 10)
    truth_warm, truth_fresh = warm_run_s(shape), warm_run_s(shape) + warmup_s(shape)
    old = Laws(two_processes(held, 1, flagged=False)).time.estimate(shape).value
    assert max(abs(old - truth_warm) / truth_warm, abs(old - truth_fresh) / truth_fresh) > TOLERANCE
    new = Laws(two_processes(held, 1)).time
    warm, warmup = new.estimate(shape).value, new.warmup_estimate(shape).value
    assert warm == pytest.approx(truth_warm, rel=TOLERANCE)
    assert warm + warmup == pytest.approx(truth_fresh, rel=TOLERANCE)


def test_the_held_out_error_splits_warm_repeats_from_first_at_size_jobs() -> None:
    jobs = two_processes((0, 0), 4)  # every size seen
    held_out = Laws(jobs).held_out()
    first = sum(1 for o in jobs if o.first_at_size)
    assert held_out["time_first_at_size"]["jobs"] == first
    assert held_out["time_warm"]["jobs"] == len(jobs) - first
    assert held_out["time"]["jobs"] == len(jobs)
    for part in ("time", "time_warm", "time_first_at_size"):
        assert held_out[part]["max_relative_error"] < TOLERANCE
    old = Laws(two_processes((0, 0), 4, flagged=False)).held_out()["time"]
    assert old["max_relative_error"] > held_out["time"]["max_relative_error"]


def test_a_job_whose_generator_did_not_say_teaches_no_warmup_and_is_judged_without_its_own() -> None:
    rng = random.Random(5)
    said = [job(JobShape(*size, 20), True, rng) for size in SIZES]
    shape = JobShape(512, 16, 20)
    run = warm_run_s(shape) + 0.7
    unsaid = Observation(H200, shape, None, run, step_s(shape), warmup_s=0.7, first_at_size=None)
    laws = Laws([*said, unsaid])
    assert laws.time.warmup.n == len(SIZES)
    assert unsaid.outside_s == pytest.approx(outside_s(shape))
    held_out = laws.held_out()
    assert held_out["time"]["jobs"] == len(SIZES) + 1
    assert held_out["time_warm"]["jobs"] == 0


def test_with_no_first_at_size_job_the_warmup_is_the_prior() -> None:
    rng = random.Random(6)
    laws = Laws([job(JobShape(*size, 20), False, rng) for size in SIZES])
    estimate = laws.time.warmup_estimate(JobShape(512, 16, 20))
    assert estimate.source == "prior"
    assert 0.3 < estimate.value < 0.9
